//! The arm64 kernel `Image` (Linux Documentation/arch/arm64/booting.rst, "Call the kernel
//! image"): a 64-byte header, then the kernel, loaded `text_offset` bytes above a 2 MiB
//! aligned base and entered at its first byte.
//!
//! Plain code, compiled and tested on every host; only the aarch64 build boots with it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use devices::GuestMemory;

mod defs {
    //! booting.rst, "Call the kernel image": the header's layout.

    /// Size of the header.
    pub const HEADER_SIZE: usize = 64;
    /// Offset of `text_offset` (u64, little endian).
    pub const TEXT_OFFSET: usize = 8;
    /// Offset of `image_size`.
    pub const IMAGE_SIZE: usize = 16;
    /// Offset of `flags`.
    pub const FLAGS: usize = 24;
    /// Offset of `magic` (u32).
    pub const MAGIC: usize = 56;
    /// "ARM\x64".
    pub const MAGIC_VALUE: u32 = 0x644d_5241;
    /// `flags` bit 0: the kernel is big endian.
    pub const FLAG_BIG_ENDIAN: u64 = 1;
    /// `text_offset` of a kernel older than 3.17 (whose `image_size` is 0).
    pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
    /// The load base's alignment.
    pub const BASE_ALIGN: u64 = 2 << 20;
}

use defs::*;

/// Errors of Image loading.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read the kernel")]
    Read(#[source] std::io::Error),
    /// Shorter than the header.
    #[error("the kernel is {0} bytes, shorter than the 64-byte arm64 Image header")]
    Truncated(usize),
    /// No "ARM\x64" magic.
    #[error(
        "not an arm64 Image (magic {0:#010x} instead of 0x644d5241; a compressed Image.gz, a \
         vmlinux ELF or an x86 bzImage cannot be booted)"
    )]
    BadMagic(u32),
    /// A big-endian kernel.
    #[error("the kernel is big endian; only little-endian arm64 kernels are supported")]
    BigEndian,
    /// Does not fit in RAM.
    #[error(
        "the kernel ({size} bytes at offset {text_offset:#x}) does not fit in {ram} bytes of ram"
    )]
    TooLarge {
        /// Bytes the kernel needs (its image size or its file size, whichever is larger).
        size: u64,
        /// Its offset from the load base.
        text_offset: u64,
        /// RAM available.
        ram: u64,
    },
    /// Writing guest memory failed.
    #[error("cannot write the kernel into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the kernel goes above a 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes of memory the kernel takes from its start (bss included); 0 for kernels before
    /// 3.17, which do not say.
    pub image_size: u64,
    /// `flags`.
    pub flags: u64,
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

impl ImageHeader {
    /// Parses the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() < HEADER_SIZE {
            return Err(ImageError::Truncated(bytes.len()));
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[MAGIC..MAGIC + 4]);
        let magic = u32::from_le_bytes(magic);
        if magic != MAGIC_VALUE {
            return Err(ImageError::BadMagic(magic));
        }
        let image_size = u64_at(bytes, IMAGE_SIZE);
        let flags = u64_at(bytes, FLAGS);
        if image_size != 0 && flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian);
        }
        let text_offset = if image_size == 0 {
            LEGACY_TEXT_OFFSET
        } else {
            u64_at(bytes, TEXT_OFFSET)
        };
        Ok(ImageHeader {
            text_offset,
            image_size,
            flags,
        })
    }
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedImage {
    /// The entry point (the kernel's first byte).
    pub entry: u64,
    /// First byte after the memory the kernel takes.
    pub end: u64,
}

/// Where an Image of `header` and `file_size` bytes goes in RAM `(start, size)`: the base is
/// RAM's start rounded up to 2 MiB, the kernel `text_offset` above it.
pub fn placement(
    header: &ImageHeader,
    file_size: u64,
    ram: (u64, u64),
) -> Result<LoadedImage, ImageError> {
    let (ram_start, ram_size) = ram;
    let size = header.image_size.max(file_size);
    let too_large = || ImageError::TooLarge {
        size,
        text_offset: header.text_offset,
        ram: ram_size,
    };
    let base = ram_start
        .checked_add(BASE_ALIGN - 1)
        .ok_or_else(too_large)?
        & !(BASE_ALIGN - 1);
    let entry = base.checked_add(header.text_offset).ok_or_else(too_large)?;
    let end = entry.checked_add(size).ok_or_else(too_large)?;
    if end > ram_start.saturating_add(ram_size) {
        return Err(too_large());
    }
    Ok(LoadedImage { entry, end })
}

/// Loads the Image at `path` into the RAM `(start, size)` of `mem`.
pub fn load(mem: &GuestMemory, path: &Path, ram: (u64, u64)) -> Result<LoadedImage, ImageError> {
    let mut file = File::open(path).map_err(ImageError::Read)?;
    let mut kernel = Vec::new();
    file.read_to_end(&mut kernel).map_err(ImageError::Read)?;
    let header = ImageHeader::parse(&kernel)?;
    let loaded = placement(&header, kernel.len() as u64, ram)?;
    mem.write_slice(&kernel, GuestAddress(loaded.entry))
        .map_err(ImageError::Write)?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn test_image_header_parses() {
        let h = ImageHeader::parse(&header(0, 0x1_0000, 0xa)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x1_0000,
                flags: 0xa
            }
        );
        // Before 3.17: image_size 0, text_offset 0x80000 whatever the field says.
        let old = ImageHeader::parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!(old.text_offset, 0x8_0000);
    }

    #[test]
    fn test_image_bad_inputs_are_errors() {
        assert!(matches!(
            ImageHeader::parse(&[0u8; 10]),
            Err(ImageError::Truncated(10))
        ));
        assert!(matches!(
            ImageHeader::parse(&[]),
            Err(ImageError::Truncated(0))
        ));
        let mut bz = header(0, 0x1000, 0);
        bz[56..60].copy_from_slice(b"HdrS");
        let err = ImageHeader::parse(&bz).unwrap_err();
        assert!(err.to_string().contains("not an arm64 Image"), "{err}");
        assert!(matches!(
            ImageHeader::parse(&header(0, 0x1000, 1)),
            Err(ImageError::BigEndian)
        ));
    }

    #[test]
    fn test_image_placement() {
        let ram = (0x8000_0000, 64 << 20);
        let h = ImageHeader::parse(&header(0, 16 << 20, 0)).unwrap();
        assert_eq!(
            placement(&h, 12 << 20, ram).unwrap(),
            LoadedImage {
                entry: 0x8000_0000,
                end: 0x8000_0000 + (16 << 20)
            }
        );
        // The file may be larger than image_size claims: it all must fit.
        assert_eq!(
            placement(&h, 20 << 20, ram).unwrap().end,
            0x8000_0000 + (20 << 20)
        );
        let big = ImageHeader::parse(&header(0, 80 << 20, 0)).unwrap();
        assert!(matches!(
            placement(&big, 1, ram),
            Err(ImageError::TooLarge { .. })
        ));
        // Hostile header values never overflow.
        let hostile = ImageHeader::parse(&header(u64::MAX - 4, u64::MAX, 0)).unwrap();
        assert!(placement(&hostile, 64, ram).is_err());
        // An unaligned RAM start is rounded up to 2 MiB.
        let odd = placement(&h, 64, (0x8010_0000, 64 << 20)).unwrap();
        assert_eq!(odd.entry, 0x8020_0000);
    }

    #[test]
    fn test_image_loads_into_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Image");
        let mut kernel = header(0x1000, 0x4000, 0);
        kernel.extend_from_slice(b"KERNEL-BODY");
        std::fs::write(&path, &kernel).unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0x8000_0000), 1 << 20)]).unwrap();
        let loaded = load(&mem, &path, (0x8000_0000, 1 << 20)).unwrap();
        assert_eq!(loaded.entry, 0x8000_1000);
        assert_eq!(loaded.end, 0x8000_5000);
        let mut body = [0u8; 11];
        mem.read_slice(&mut body, GuestAddress(0x8000_1040))
            .unwrap();
        assert_eq!(&body, b"KERNEL-BODY");
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            load(&mem, &path, (0x8000_0000, 1 << 20)),
            Err(ImageError::Truncated(5))
        ));
    }
}
