//! The state file: a fixed header (magic, format version, length and checksum of the
//! document), then the JSON document. A file from another program, another format version,
//! cut short or altered is refused with an error that says which.

use std::io::{Read, Write};
use std::path::Path;

use super::state::SnapshotState;
use super::SnapshotError;

/// The first bytes of a state file.
pub const MAGIC: [u8; 8] = *b"RMVMSNAP";
/// The format this rmachine-vmm writes and reads. Bump it whenever the document or the
/// memory file change in a way an older reader would misread.
pub const FORMAT_VERSION: u32 = 1;
/// Header: magic, version (u32), reserved (u32), document length (u64), CRC-32 of the
/// document (u32), reserved (u32); little endian.
pub const HEADER_LEN: usize = 32;
/// Largest document accepted (a few KiB per vCPU and device in practice).
const MAX_DOCUMENT: u64 = 64 << 20;

/// CRC-32 (IEEE, reflected), bitwise: the document is small.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The bytes of a state file holding `state`.
pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, SnapshotError> {
    let doc = serde_json::to_vec(state).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + doc.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(doc.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&doc).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&doc);
    Ok(out)
}

/// Reads the state document from `bytes` (the whole file), naming the problem when it cannot.
pub fn decode(bytes: &[u8]) -> Result<SnapshotState, SnapshotError> {
    let corrupt = |why: String| SnapshotError::Corrupt(why);
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            what: "state file header",
            have: bytes.len() as u64,
            want: HEADER_LEN as u64,
        });
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::FormatVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_DOCUMENT {
        return Err(corrupt(format!(
            "the header announces a {len}-byte document"
        )));
    }
    let have = (bytes.len() - HEADER_LEN) as u64;
    if have < len {
        return Err(SnapshotError::Truncated {
            what: "state document",
            have,
            want: len,
        });
    }
    if have > len {
        return Err(corrupt(format!(
            "{} bytes follow the {len}-byte document",
            have - len
        )));
    }
    let doc = &bytes[HEADER_LEN..];
    if crc32(doc) != u32_at(24) {
        return Err(corrupt("the document's checksum does not match".into()));
    }
    serde_json::from_slice(doc).map_err(|e| corrupt(format!("the document does not parse: {e}")))
}

/// Writes the state file at `path` through a temporary file and a rename, synced.
pub fn write(path: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    let bytes = encode(state)?;
    let tmp = path.with_extension("tmp");
    let io = |e| SnapshotError::Io("write the state file", e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Reads and checks the state file at `path`.
pub fn read(path: &Path) -> Result<SnapshotState, SnapshotError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| SnapshotError::Open(path.display().to_string(), e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| SnapshotError::Open(path.display().to_string(), e))?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn test_decode_names_each_problem() {
        let doc = br#"{"x":1}"#;
        let mut good = Vec::new();
        good.extend_from_slice(&MAGIC);
        good.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        good.extend_from_slice(&0u32.to_le_bytes());
        good.extend_from_slice(&(doc.len() as u64).to_le_bytes());
        good.extend_from_slice(&crc32(doc).to_le_bytes());
        good.extend_from_slice(&0u32.to_le_bytes());
        good.extend_from_slice(doc);
        // A valid envelope around a document that is not a snapshot state.
        let e = decode(&good).unwrap_err().to_string();
        assert!(e.contains("does not parse"), "{e}");

        let e = decode(b"ELF\x7f....").unwrap_err().to_string();
        assert!(e.contains("not an rmachine-vmm snapshot"), "{e}");

        let e = decode(&good[..good.len() - 3]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(e.contains("4 of 7 bytes"), "{e}");

        let mut v2 = good.clone();
        v2[8] = 2;
        let e = decode(&v2).unwrap_err().to_string();
        assert!(e.contains("format version 2"), "{e}");
        assert!(e.contains("reads version 1"), "{e}");

        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let e = decode(&flipped).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }
}
