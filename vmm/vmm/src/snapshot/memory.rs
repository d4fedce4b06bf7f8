//! Guest memory to and from the sparse memory file.
//!
//! Saving writes only pages the guest touched and that are not all zero, at their offsets in a
//! file sized to the whole of guest memory, so the file is sparse: a 4 GiB guest whose kernel
//! and engine touched 300 MiB takes about 300 MiB of disk. Which pages to look at: for private
//! anonymous memory the pages `mincore` reports resident (pages never touched, or given back
//! by the balloon, are not); for shared memory (a memfd) the data extents `SEEK_DATA` finds.
//! Each candidate page is then checked for zeroes. Loading reads the file's data extents
//! (`SEEK_DATA`/`SEEK_HOLE`) into guest memory and leaves the holes alone: those pages are
//! never touched, so they cost the host nothing until the guest uses them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use devices::GuestMemory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::state::MemoryLayout;
use super::SnapshotError;

/// The page size snapshots work in.
const PAGE: usize = 4096;
/// Largest single write or read.
const MAX_IO: usize = 64 << 20;

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SnapshotError {
    move |e| SnapshotError::Io(what, e)
}

/// The layout `mem` has: its regions one after the other.
pub fn layout_of(mem: &GuestMemory) -> MemoryLayout {
    let regions: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    MemoryLayout {
        size_bytes: regions.iter().map(|r| r.1).sum(),
        regions,
        data_bytes: 0,
    }
}

/// `[start, end)` offsets of `len` bytes at `ptr` that are resident (`mincore`).
fn resident_ranges(ptr: *mut u8, len: usize) -> Result<Vec<(usize, usize)>, SnapshotError> {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: `ptr` is the page-aligned start of a mapping of `len` bytes (a guest memory
    // region, alive for the call); `vec` has one byte per page of it, as mincore writes.
    let rc = unsafe { libc::mincore(ptr.cast(), len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(SnapshotError::Io(
            "find the touched guest pages (mincore)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(runs(vec.iter().map(|&v| v & 1 != 0), len))
}

/// Coalesces a per-page flag into `[start, end)` byte ranges, clipped to `len`.
fn runs(flags: impl Iterator<Item = bool>, len: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, set) in flags.enumerate() {
        if !set {
            continue;
        }
        let (start, end) = (i * PAGE, ((i + 1) * PAGE).min(len));
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// `[start, end)` offsets, relative to `base`, of the data extents of `file` within
/// `[base, base + len)`. A file system without `SEEK_DATA` gives the whole range.
fn data_ranges(file: &File, base: u64, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let end = base + len;
    let mut out = Vec::new();
    let mut pos = base;
    while pos < end {
        // SAFETY: lseek takes integers and touches no memory of ours.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENXIO) {
                // No SEEK_DATA here: treat everything left as data.
                out.push((pos - base, len));
            }
            break;
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        out.push((data - base, hole - base));
        pos = hole;
    }
    out
}

fn is_zero(page: &[u8]) -> bool {
    // SAFETY: any bit pattern is a valid u64; `align_to` only reinterprets the aligned middle.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn pwrite_all(file: &File, mut buf: &[u8], mut offset: u64) -> Result<(), SnapshotError> {
    use std::os::unix::fs::FileExt;
    while !buf.is_empty() {
        let n = buf.len().min(MAX_IO);
        let written = file
            .write_at(&buf[..n], offset)
            .map_err(io("write guest memory"))?;
        if written == 0 {
            return Err(SnapshotError::Io(
                "write guest memory",
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        buf = &buf[written..];
        offset += written as u64;
    }
    Ok(())
}

/// Writes guest memory to a new sparse file at `path`; returns the layout with the bytes of
/// data written. The VM must be paused and the devices held (nothing writes guest memory).
pub fn save(mem: &GuestMemory, path: &Path) -> Result<MemoryLayout, SnapshotError> {
    let mut layout = layout_of(mem);
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io("create the memory file"))?;
    file.set_len(layout.size_bytes)
        .map_err(io("size the memory file"))?;
    let mut file_offset = 0u64;
    let mut data_bytes = 0u64;
    for region in mem.iter() {
        let ptr = region.as_ptr();
        let len = region.len() as usize;
        let candidates: Vec<(usize, usize)> = match region.file_offset() {
            Some(fo) => data_ranges(fo.file(), fo.start(), len as u64)
                .into_iter()
                .map(|(s, e)| (s as usize, e as usize))
                .collect(),
            None => resident_ranges(ptr, len)?,
        };
        // SAFETY: `ptr` is the start of a live mapping of `len` bytes (the region, kept alive
        // by `mem`). The VM is paused and every device is held by the caller, and guest memory
        // is not shared with another process when it is private (a shared memfd only with
        // virtio-fs backends, whose devices refuse snapshots), so nothing writes it while this
        // slice exists.
        let guest = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        for (start, end) in candidates {
            let mut run: Option<usize> = None;
            let mut page = start;
            while page < end {
                let next = (page + PAGE).min(end);
                let zero = is_zero(&guest[page..next]);
                match (zero, run) {
                    (false, None) => run = Some(page),
                    (true, Some(s)) => {
                        pwrite_all(&file, &guest[s..page], file_offset + s as u64)?;
                        data_bytes += (page - s) as u64;
                        run = None;
                    }
                    _ => {}
                }
                page = next;
            }
            if let Some(s) = run {
                pwrite_all(&file, &guest[s..end], file_offset + s as u64)?;
                data_bytes += (end - s) as u64;
            }
        }
        file_offset += len as u64;
    }
    file.sync_data().map_err(io("sync the memory file"))?;
    std::fs::rename(&tmp, path).map_err(io("rename the memory file"))?;
    layout.data_bytes = data_bytes;
    Ok(layout)
}

/// Checks that `file` (the memory file) fits `layout` and `mem`'s regions.
pub fn check(mem: &GuestMemory, file: &File, layout: &MemoryLayout) -> Result<(), SnapshotError> {
    let ours = layout_of(mem);
    if ours.regions != layout.regions {
        return Err(SnapshotError::Corrupt(format!(
            "the memory regions {:?} of the snapshot are not this VM's {:?}",
            layout.regions, ours.regions
        )));
    }
    let len = file
        .metadata()
        .map_err(io("read the memory file's size"))?
        .len();
    if len < layout.size_bytes {
        return Err(SnapshotError::Truncated {
            what: "memory file",
            have: len,
            want: layout.size_bytes,
        });
    }
    if len > layout.size_bytes {
        return Err(SnapshotError::Corrupt(format!(
            "the memory file is {len} bytes, the snapshot says {}",
            layout.size_bytes
        )));
    }
    Ok(())
}

/// Reads the memory file's data into guest memory (holes stay untouched). Returns the bytes
/// read. Call [`check`] first.
pub fn load(mem: &GuestMemory, file: &File) -> Result<u64, SnapshotError> {
    use std::os::unix::fs::FileExt;
    let mut file_offset = 0u64;
    let mut read = 0u64;
    for region in mem.iter() {
        let ptr = region.as_ptr();
        let len = region.len() as usize;
        // SAFETY: `ptr` is the start of a live mapping of `len` bytes (the region, kept alive
        // by `mem`); no vCPU runs and no device is active yet, so nothing else accesses guest
        // memory while this slice exists.
        let guest = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        for (start, end) in data_ranges(file, file_offset, len as u64) {
            let (start, end) = (start as usize, end as usize);
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(MAX_IO);
                let got = file
                    .read_at(&mut guest[pos..pos + n], file_offset + pos as u64)
                    .map_err(io("read the memory file"))?;
                if got == 0 {
                    return Err(SnapshotError::Truncated {
                        what: "memory file",
                        have: file_offset + pos as u64,
                        want: file_offset + end as u64,
                    });
                }
                pos += got;
                read += got as u64;
            }
        }
        file_offset += len as u64;
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn test_runs_coalesce_pages() {
        let r = runs([true, true, false, true].into_iter(), 4 * PAGE - 100);
        assert_eq!(r, vec![(0, 2 * PAGE), (3 * PAGE, 4 * PAGE - 100)]);
    }

    #[test]
    fn test_save_writes_only_nonzero_pages_and_load_restores_them() {
        // Where RAM starts on this arch (0 on x86_64, 2 GiB on aarch64).
        let base = crate::layout::ram_ranges(1)[0].0;
        for shared in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mem = crate::memory::create(64 << 20, shared).unwrap();
            mem.write_slice(&[0xab; 3 * PAGE], GuestAddress(base + 0x10000))
                .unwrap();
            // Touched, but zero: not written.
            mem.write_slice(&[0u8; PAGE], GuestAddress(base + 0x40000))
                .unwrap();
            mem.write_slice(b"end", GuestAddress(base + (64 << 20) - 3))
                .unwrap();
            let path = dir.path().join("memory");
            let layout = save(&mem, &path).unwrap();
            assert_eq!(layout.data_bytes, 4 * PAGE as u64, "shared {shared}");
            assert_eq!(layout.size_bytes, 64 << 20);
            let file = File::open(&path).unwrap();
            use std::os::unix::fs::MetadataExt;
            // Sparse: far less allocated than its size.
            assert!(file.metadata().unwrap().blocks() * 512 < 1 << 20);

            let fresh = crate::memory::create(64 << 20, shared).unwrap();
            check(&fresh, &file, &layout).unwrap();
            load(&fresh, &file).unwrap();
            let mut buf = [0u8; 3 * PAGE];
            fresh
                .read_slice(&mut buf, GuestAddress(base + 0x10000))
                .unwrap();
            assert!(buf.iter().all(|&b| b == 0xab));
            let mut end = [0u8; 3];
            fresh
                .read_slice(&mut end, GuestAddress(base + (64 << 20) - 3))
                .unwrap();
            assert_eq!(&end, b"end");

            let short = dir.path().join("short");
            std::fs::copy(&path, &short).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&short)
                .unwrap();
            f.set_len(layout.size_bytes - 4096).unwrap();
            let e = check(&fresh, &File::open(&short).unwrap(), &layout)
                .unwrap_err()
                .to_string();
            assert!(e.contains("memory file is truncated"), "{e}");
        }
    }
}
