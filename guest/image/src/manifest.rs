//! The manifest's entries for the files the builder installs (the format itself is
//! `rmachine_protocol::image`).

use std::path::Path;

use rmachine_protocol::image::Artifact;

use crate::ImageError;

/// Describes a file by its name, size and sha256.
pub(crate) fn describe(path: &Path) -> Result<Artifact, ImageError> {
    let size_bytes = std::fs::metadata(path)
        .map_err(ImageError::io("cannot stat", path))?
        .len();
    Ok(Artifact {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: crate::sha256_file(path)?,
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_describe_names_size_and_sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bzImage");
        std::fs::write(&path, b"kernel").unwrap();
        let a = describe(&path).unwrap();
        assert_eq!(a.file, "bzImage");
        assert_eq!(a.size_bytes, 6);
        // sha256 of "kernel"
        assert_eq!(
            a.sha256,
            "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c"
        );
    }
}
