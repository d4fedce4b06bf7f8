//! Docker CLI contexts, one per machine (`rmachine-<name>`), written the way the docker
//! CLI stores them (`~/.docker/contexts/meta/<sha256 of name>/meta.json`), so no docker
//! binary is needed to create or switch them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Why a context could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot find the docker config folder: set HOME or DOCKER_CONFIG")]
    NoConfigDir,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not valid JSON; fix or remove it")]
    Corrupt(PathBuf),
}

/// The context name of machine `machine`.
pub fn context_name(machine: &str) -> String {
    format!("rmachine-{machine}")
}

/// The docker CLI's config folder: `DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> Result<PathBuf, ContextError> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::home_dir()
        .map(|h| h.join(".docker"))
        .ok_or(ContextError::NoConfigDir)
}

fn meta_dir(config_dir: &Path, name: &str) -> PathBuf {
    config_dir
        .join("contexts/meta")
        .join(hex::encode(Sha256::digest(name.as_bytes())))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContextError {
    let path = path.to_path_buf();
    move |source| ContextError::Io { what, path, source }
}

/// Creates or updates context `name` pointing at `docker_host` (`unix:///…/docker.sock`,
/// `npipe:////./pipe/…`).
pub fn write(
    config_dir: &Path,
    name: &str,
    docker_host: &str,
    description: &str,
) -> Result<(), ContextError> {
    let dir = meta_dir(config_dir, name);
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let meta = json!({
        "Name": name,
        "Metadata": { "Description": description },
        "Endpoints": { "docker": { "Host": docker_host, "SkipTLSVerify": false } },
    });
    let path = dir.join("meta.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&meta).expect("json value serializes"),
    )
    .map_err(io("cannot write", &path))
}

/// Removes context `name`; if it was the current one, the CLI falls back to `default`.
pub fn remove(config_dir: &Path, name: &str) -> Result<(), ContextError> {
    let dir = meta_dir(config_dir, name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ContextError::Io {
                what: "cannot remove",
                path: dir,
                source: e,
            })
        }
    }
    if current(config_dir)?.as_deref() == Some(name) {
        set_current(config_dir, None)?;
    }
    Ok(())
}

/// Whether context `name` exists.
pub fn exists(config_dir: &Path, name: &str) -> bool {
    meta_dir(config_dir, name).join("meta.json").exists()
}

/// The current context (`currentContext` of config.json), if set.
pub fn current(config_dir: &Path) -> Result<Option<String>, ContextError> {
    Ok(read_config(config_dir)?
        .get("currentContext")
        .and_then(Value::as_str)
        .map(str::to_string))
}

/// Switches the current context (`None`: back to `default`), keeping the rest of
/// config.json as it was.
pub fn set_current(config_dir: &Path, name: Option<&str>) -> Result<(), ContextError> {
    let mut config = read_config(config_dir)?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| ContextError::Corrupt(config_dir.join("config.json")))?;
    match name {
        Some(n) => {
            obj.insert("currentContext".into(), Value::String(n.to_string()));
        }
        None => {
            obj.remove("currentContext");
        }
    }
    std::fs::create_dir_all(config_dir).map_err(io("cannot create", config_dir))?;
    let path = config_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("json value serializes");
    crate::store::write_atomic(&path, text.as_bytes()).map_err(io("cannot write", &path))
}

fn read_config(config_dir: &Path) -> Result<Value, ContextError> {
    let path = config_dir.join("config.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| ContextError::Corrupt(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(ContextError::Io {
            what: "cannot read",
            path,
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_context_write_use_remove_keeps_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path();
        std::fs::write(
            cfg.join("config.json"),
            r#"{"auths":{"x":{}},"currentContext":"other"}"#,
        )
        .unwrap();
        write(cfg, "rmachine-dev", "unix:///m/docker.sock", "rmachine dev").unwrap();
        assert!(exists(cfg, "rmachine-dev"));
        let meta: Value = serde_json::from_slice(
            &std::fs::read(meta_dir(cfg, "rmachine-dev").join("meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["Endpoints"]["docker"]["Host"], "unix:///m/docker.sock");
        set_current(cfg, Some("rmachine-dev")).unwrap();
        assert_eq!(current(cfg).unwrap().as_deref(), Some("rmachine-dev"));
        remove(cfg, "rmachine-dev").unwrap();
        assert!(!exists(cfg, "rmachine-dev"));
        assert_eq!(current(cfg).unwrap(), None);
        let config: Value =
            serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
        assert!(
            config["auths"]["x"].is_object(),
            "other settings lost: {config}"
        );
    }

    /// A Windows machine's context points at its named pipe, as Docker Desktop's does.
    #[test]
    fn test_context_with_a_named_pipe_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::sys::local_socket::Endpoint::Pipe("rmachine-dev".into()).docker_host();
        write(dir.path(), "rmachine-dev", &host, "rmachine dev").unwrap();
        let meta: Value = serde_json::from_slice(
            &std::fs::read(meta_dir(dir.path(), "rmachine-dev").join("meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["Endpoints"]["docker"]["Host"],
            "npipe:////./pipe/rmachine-dev"
        );
    }

    #[test]
    fn test_meta_dir_is_sha256_of_name() {
        // The docker CLI's own layout: sha256("default") is well known.
        let d = meta_dir(Path::new("/c"), "default");
        assert!(
            d.ends_with("37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"),
            "{}",
            d.display()
        );
    }

    #[test]
    fn test_corrupt_config_json_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{ nope").unwrap();
        assert!(matches!(
            set_current(dir.path(), Some("x")),
            Err(ContextError::Corrupt(_))
        ));
    }
}
