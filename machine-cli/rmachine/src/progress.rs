//! Progress display for long operations: a spinner with the current step and detail on a
//! terminal, plain timestamped lines otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct StepProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    step_started: std::cell::Cell<Instant>,
    last_plain_detail: std::cell::Cell<Instant>,
}

impl StepProgress {
    pub fn new() -> StepProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg} [{elapsed}]")
                    .expect("template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let now = Instant::now();
        StepProgress {
            bar,
            started: now,
            step_started: std::cell::Cell::new(now),
            last_plain_detail: std::cell::Cell::new(now - Duration::from_secs(60)),
        }
    }

    pub fn done(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{what} ({:.1} s)", self.started.elapsed().as_secs_f64());
    }
}

// The image builder's progress trait (the builder runs on Linux only).
#[cfg(target_os = "linux")]
mod image_progress;

impl StepProgress {
    /// A new step begins (`index` counts from 1).
    pub fn step(&self, index: usize, total: usize, what: &str) {
        self.step_started.set(Instant::now());
        let prefix = format!("[{index}/{total}] {what}");
        match &self.bar {
            Some(bar) => {
                bar.set_prefix(prefix);
                bar.set_message("");
            }
            None => eprintln!("{prefix}"),
        }
    }

    /// A line that stays (above the spinner on a terminal).
    pub fn println(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.println(what),
            None => eprintln!("      {what}"),
        }
    }

    /// A detail within the current step.
    pub fn detail(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_string()),
            None => {
                // Plain output: at most one detail line every 5 s.
                if self.last_plain_detail.get().elapsed() >= Duration::from_secs(5) {
                    self.last_plain_detail.set(Instant::now());
                    eprintln!("      {what}");
                }
            }
        }
    }
}
