//! The machine's processes as the host agent holds them: its own children, or processes a
//! host agent that died left running, taken over by this one (adopted: not its children,
//! so they are watched through their [`ProcessId`]).

use rmachine_machine::sys::process::ProcessId;

pub(crate) enum Proc {
    /// Started by this host agent; killed if it is dropped (the host agent failed). Boxed:
    /// Windows' `Child` is far larger than a `ProcessId`.
    Child {
        child: Box<tokio::process::Child>,
        id: Option<ProcessId>,
    },
    /// Taken over; killed if it is dropped, as a child would be.
    Adopted(ProcessId),
}

impl Proc {
    /// A child just started (it is killed when dropped).
    pub(crate) fn child(child: tokio::process::Child) -> Proc {
        let id = child.id().and_then(ProcessId::of);
        Proc::Child {
            child: Box::new(child),
            id,
        }
    }

    /// Who it is, for `state.json`.
    pub(crate) fn id(&self) -> Option<ProcessId> {
        match self {
            Proc::Child { id, .. } => *id,
            Proc::Adopted(id) => Some(*id),
        }
    }

    /// Waits until it ends; says how (a taken-over process's exit status is its old
    /// parent's to read, not ours).
    pub(crate) async fn wait(&mut self) -> String {
        match self {
            Proc::Child { child, .. } => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            },
            Proc::Adopted(id) => {
                id.exited().await;
                "it ended".into()
            }
        }
    }

    /// How it ended, if it has.
    pub(crate) fn try_exited(&mut self) -> Option<String> {
        match self {
            Proc::Child { child, .. } => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            Proc::Adopted(id) => (!id.is_alive()).then(|| "it ended".into()),
        }
    }

    pub(crate) async fn kill(&mut self) {
        match self {
            Proc::Child { child, .. } => {
                let _ = child.kill().await;
            }
            Proc::Adopted(id) => id.kill(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Proc::Adopted(id) = self {
            id.kill();
        }
    }
}
