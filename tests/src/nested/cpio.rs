//! A minimal writer of the `newc` cpio format (what the Linux kernel unpacks as an initramfs):
//! every entry is a 110-byte ASCII header, the NUL-terminated name and the data, each padded
//! to 4 bytes, and the archive ends with the `TRAILER!!!` entry.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// Mode bits of the entry types used here.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub path: String,
    /// File type and permission bits.
    pub mode: u32,
    /// Contents (regular files only).
    pub data: Vec<u8>,
    /// Device numbers (character devices only).
    pub rdev: (u32, u32),
}

impl Entry {
    /// A regular file.
    pub fn file(path: &str, perm: u32, data: Vec<u8>) -> Entry {
        Entry {
            path: path.trim_start_matches('/').to_string(),
            mode: S_IFREG | perm,
            data,
            rdev: (0, 0),
        }
    }

    /// A directory.
    pub fn dir(path: &str) -> Entry {
        Entry {
            path: path.trim_start_matches('/').to_string(),
            mode: S_IFDIR | 0o755,
            data: Vec::new(),
            rdev: (0, 0),
        }
    }

    /// A character device node.
    pub fn char_dev(path: &str, perm: u32, major: u32, minor: u32) -> Entry {
        Entry {
            path: path.trim_start_matches('/').to_string(),
            mode: S_IFCHR | perm,
            data: Vec::new(),
            rdev: (major, minor),
        }
    }
}

fn pad4(out: &mut impl Write, len: usize) -> io::Result<()> {
    out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
}

fn write_entry(out: &mut impl Write, ino: u32, e: &Entry) -> io::Result<()> {
    let name_len = e.path.len() + 1;
    let nlink = if e.mode & S_IFDIR != 0 { 2 } else { 1 };
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, so that equal inputs give equal archives
        e.data.len() as u32,
        0, // devmajor
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        name_len as u32,
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(e.path.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + name_len)?;
    out.write_all(&e.data)?;
    pad4(out, e.data.len())
}

/// Writes `entries` as a newc archive, adding the parent directories they need (before their
/// contents) and the trailer.
pub fn write_archive(out: &mut impl Write, entries: &[Entry]) -> io::Result<()> {
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut ino = 1;
    for e in entries {
        let mut parents = Vec::new();
        let mut path = e.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            parents.push(parent.to_string());
            path = parent;
        }
        let own_dir = (e.mode & S_IFDIR != 0).then(|| e.path.clone());
        for dir in parents.into_iter().rev().chain(own_dir) {
            if dirs.insert(dir.clone()) {
                write_entry(out, ino, &Entry::dir(&dir))?;
                ino += 1;
            }
        }
        if e.mode & S_IFDIR == 0 {
            write_entry(out, ino, e)?;
            ino += 1;
        }
    }
    let trailer = Entry {
        path: "TRAILER!!!".to_string(),
        mode: 0,
        data: Vec::new(),
        rdev: (0, 0),
    };
    write_entry(out, 0, &trailer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses an archive back into entries.
    fn parse(mut bytes: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let total = bytes.len();
        loop {
            let at = total - bytes.len();
            assert_eq!(at % 4, 0, "entry not aligned");
            assert_eq!(&bytes[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, size, rmaj, rmin, name_len) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&bytes[110..110 + name_len - 1])
                .unwrap()
                .to_string();
            assert_eq!(bytes[110 + name_len - 1], 0);
            let data_at = (110 + name_len).div_ceil(4) * 4;
            let data = bytes[data_at..data_at + size].to_vec();
            bytes = &bytes[(data_at + size).div_ceil(4) * 4..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty());
                return out;
            }
            out.push(Entry {
                path: name,
                mode,
                data,
                rdev: (rmaj, rmin),
            });
        }
    }

    #[test]
    fn test_archive_round_trip_with_parent_dirs() {
        let mut buf = Vec::new();
        write_archive(
            &mut buf,
            &[
                Entry::file("/init", 0o755, b"#!/bin/sh\n".to_vec()),
                Entry::file("lib/modules/kvm.ko", 0o644, vec![1, 2, 3]),
                Entry::file("lib/modules/kvm-amd.ko", 0o644, vec![]),
                Entry::char_dev("dev/console", 0o600, 5, 1),
                Entry::dir("tmp"),
            ],
        )
        .unwrap();
        let entries = parse(&buf);
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "lib",
                "lib/modules",
                "lib/modules/kvm.ko",
                "lib/modules/kvm-amd.ko",
                "dev",
                "dev/console",
                "tmp"
            ]
        );
        assert_eq!(entries[0].mode, S_IFREG | 0o755);
        assert_eq!(entries[0].data, b"#!/bin/sh\n");
        assert_eq!(entries[1].mode, S_IFDIR | 0o755);
        assert_eq!(entries[3].data, [1, 2, 3]);
        assert_eq!(entries[6].mode, S_IFCHR | 0o600);
        assert_eq!(entries[6].rdev, (5, 1));
    }

    #[test]
    fn test_archive_is_deterministic() {
        let entries = [Entry::file("a/b", 0o644, vec![9; 5])];
        let (mut one, mut two) = (Vec::new(), Vec::new());
        write_archive(&mut one, &entries).unwrap();
        write_archive(&mut two, &entries).unwrap();
        assert_eq!(one, two);
    }
}
