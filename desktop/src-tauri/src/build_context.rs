//! A build's context: the files of the chosen folder, less what its `.dockerignore`
//! excludes, written as a tar stream (as the docker CLI sends it: paths relative to the
//! folder, owner root, symbolic links kept as links). The Dockerfile and `.dockerignore`
//! always go, as with the CLI, so the engine can read them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::dockerignore::Ignore;

/// Why the context cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read {path}: {source}; make it readable, or add it to .dockerignore")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}; fix that line of .dockerignore")]
    Ignore(String),
    #[error("cannot send the build context: {0}")]
    Write(#[source] io::Error),
}

/// What went into a context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextSummary {
    pub files: u64,
    /// The files' bytes (not counting tar headers).
    pub bytes: u64,
    /// Files and folders left out by `.dockerignore`.
    pub ignored: u64,
}

/// The folder's `.dockerignore`, or none.
pub fn read_ignore(folder: &Path) -> Result<Ignore, ContextError> {
    let path = folder.join(".dockerignore");
    match fs::read_to_string(&path) {
        Ok(text) => Ignore::parse(&text).map_err(ContextError::Ignore),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ignore::default()),
        Err(source) => Err(ContextError::Read { path, source }),
    }
}

/// Writes `folder` as a tar stream to `out`, leaving out what `ignore` excludes but
/// never `dockerfile` (a path relative to the folder, `/` separators) or `.dockerignore`.
pub fn write_context<W: Write>(
    folder: &Path,
    dockerfile: &str,
    ignore: &Ignore,
    out: W,
) -> Result<ContextSummary, ContextError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut summary = ContextSummary::default();
    let keep = [dockerfile, ".dockerignore"];
    walk(folder, "", ignore, &keep, &mut tar, &mut summary)?;
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ContextError::Write)?;
    Ok(summary)
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn walk<W: Write>(
    dir: &Path,
    rel_dir: &str,
    ignore: &Ignore,
    keep: &[&str],
    tar: &mut tar::Builder<W>,
    summary: &mut ContextSummary,
) -> Result<(), ContextError> {
    let mut entries: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map_err(read_err(dir))?
        .map(|e| {
            let e = e.map_err(read_err(dir))?;
            Ok((e.file_name().to_string_lossy().into_owned(), e.path()))
        })
        .collect::<Result<_, ContextError>>()?;
    // The same folder gives the same tar (and the engine's cache the same keys).
    entries.sort();
    for (name, path) in entries {
        let rel = if rel_dir.is_empty() {
            name
        } else {
            format!("{rel_dir}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let excluded = ignore.excludes(&rel) && !keep.contains(&rel.as_str());
        if meta.is_dir() {
            if excluded {
                summary.ignored += 1;
                // A `!` pattern may take back something inside: look at each file then.
                if !ignore.has_exclusions() {
                    continue;
                }
            } else {
                let mut header = header_of(&meta);
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{rel}/"), io::empty())
                    .map_err(ContextError::Write)?;
            }
            walk(&path, &rel, ignore, keep, tar, summary)?;
            continue;
        }
        if excluded {
            summary.ignored += 1;
            continue;
        }
        let mut header = header_of(&meta);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(read_err(&path))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, &rel, &target)
                .map_err(ContextError::Write)?;
        } else if meta.is_file() {
            let file = File::open(&path).map_err(read_err(&path))?;
            header.set_size(meta.len());
            tar.append_data(&mut header, &rel, file).map_err(|e| {
                // A read error of the file comes back as a write error of the tar.
                if e.kind() == io::ErrorKind::BrokenPipe {
                    ContextError::Write(e)
                } else {
                    ContextError::Read {
                        path: path.clone(),
                        source: e,
                    }
                }
            })?;
            summary.files += 1;
            summary.bytes += meta.len();
        }
        // Sockets, FIFOs and devices are not sent (nor by the docker CLI).
    }
    Ok(())
}

/// A tar header with the file's mode and time, owned by root (as the docker CLI sends).
fn header_of(meta: &fs::Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    header.set_uid(0);
    header.set_gid(0);
    let _ = header.set_username("");
    let _ = header.set_groupname("");
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(p.join("app.txt"), "hello").unwrap();
        fs::write(p.join("notes.md"), "notes").unwrap();
        fs::create_dir_all(p.join("src/deep")).unwrap();
        fs::write(p.join("src/main.c"), "int main;").unwrap();
        fs::write(p.join("src/deep/x.md"), "x").unwrap();
        fs::create_dir_all(p.join("node_modules/pkg")).unwrap();
        fs::write(p.join("node_modules/pkg/index.js"), "//").unwrap();
        dir
    }

    #[test]
    fn test_context_holds_every_file_with_relative_paths() {
        let dir = folder();
        let mut out = Vec::new();
        let s = write_context(dir.path(), "Dockerfile", &Ignore::default(), &mut out).unwrap();
        assert_eq!(
            names(&out),
            [
                "Dockerfile",
                "app.txt",
                "node_modules/",
                "node_modules/pkg/",
                "node_modules/pkg/index.js",
                "notes.md",
                "src/",
                "src/deep/",
                "src/deep/x.md",
                "src/main.c"
            ]
        );
        assert_eq!(
            (s.files, s.bytes, s.ignored),
            (6, 13 + 5 + 5 + 9 + 1 + 2, 0)
        );
        // Owned by root, contents intact.
        let mut a = tar::Archive::new(&out[..]);
        let mut e = a
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().ends_with("app.txt"))
            .unwrap();
        assert_eq!(e.header().uid().unwrap(), 0);
        let mut text = String::new();
        io::Read::read_to_string(&mut e, &mut text).unwrap();
        assert_eq!(text, "hello");
    }

    #[test]
    fn test_dockerignore_leaves_files_out_but_never_the_dockerfile() {
        let dir = folder();
        fs::write(
            dir.path().join(".dockerignore"),
            "node_modules\n**/*.md\n!src/deep/x.md\nDockerfile\n.dockerignore\n",
        )
        .unwrap();
        let ignore = read_ignore(dir.path()).unwrap();
        let mut out = Vec::new();
        let s = write_context(dir.path(), "Dockerfile", &ignore, &mut out).unwrap();
        assert_eq!(
            names(&out),
            [
                ".dockerignore",
                "Dockerfile",
                "app.txt",
                "src/",
                "src/deep/",
                "src/deep/x.md",
                "src/main.c"
            ]
        );
        // node_modules/, node_modules/pkg/, its index.js (walked for the `!`), notes.md.
        assert_eq!(s.ignored, 4);
    }

    #[test]
    fn test_excluded_folders_are_skipped_whole_without_exceptions() {
        let dir = folder();
        let ignore = Ignore::parse("node_modules").unwrap();
        let mut out = Vec::new();
        let s = write_context(dir.path(), "Dockerfile", &ignore, &mut out).unwrap();
        assert_eq!(s.ignored, 1);
        assert!(!names(&out).iter().any(|n| n.starts_with("node_modules")));
    }

    #[cfg(unix)]
    #[test]
    fn test_symlinks_stay_links() {
        let dir = folder();
        std::os::unix::fs::symlink("app.txt", dir.path().join("link")).unwrap();
        let mut out = Vec::new();
        write_context(dir.path(), "Dockerfile", &Ignore::default(), &mut out).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let link = a
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().ends_with("link"))
            .unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(
            link.link_name().unwrap().unwrap().display().to_string(),
            "app.txt"
        );
    }

    #[test]
    fn test_a_bad_dockerignore_is_named() {
        let dir = folder();
        fs::write(dir.path().join(".dockerignore"), "[oops\n").unwrap();
        let err = read_ignore(dir.path()).unwrap_err().to_string();
        assert!(err.contains(".dockerignore line 1"), "{err}");
        assert!(err.contains("fix that line"), "{err}");
    }
}
