//! Loading the kernel and initrd, and writing the command line and boot information.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::layout::*;
use devices::GuestMemory;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, `boot_params` in RSI.
    Linux64,
    /// PVH: 32-bit protected mode without paging, `hvm_start_info` in EBX.
    Pvh,
}

/// A loaded kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Entry point.
    pub entry: u64,
    /// How to enter it.
    pub protocol: BootProtocol,
    /// First byte after the kernel in guest memory.
    pub end: u64,
    /// The bzImage setup header (bytes 0x1f1.. of the image), copied into `boot_params`.
    pub setup_header: Option<Vec<u8>>,
}

/// An initrd placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads an ELF vmlinux (PVH entry when it has the note) or a bzImage at 1 MiB.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<KernelImage, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::OpenKernel(name.clone(), e))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| BootError::OpenKernel(name.clone(), e))?;
    if magic == *b"\x7fELF" {
        let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| BootError::LoadKernel(name.clone(), e))?;
        let end = result.kernel_end;
        return Ok(match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => KernelImage {
                entry: addr.0,
                protocol: BootProtocol::Pvh,
                end,
                setup_header: None,
            },
            _ => {
                // The ELF entry point (e_entry, offset 24).
                let mut entry = [0u8; 8];
                file.seek(SeekFrom::Start(24))
                    .and_then(|_| file.read_exact(&mut entry))
                    .map_err(|e| BootError::OpenKernel(name.clone(), e))?;
                KernelImage {
                    entry: u64::from_le_bytes(entry),
                    protocol: BootProtocol::Linux64,
                    end,
                    setup_header: None,
                }
            }
        });
    }
    let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::LoadKernel(name.clone(), e))?;
    // The setup header runs from 0x1f1 to 0x202 + the byte at 0x201.
    let mut jump = [0u8; 2];
    file.seek(SeekFrom::Start(0x200))
        .and_then(|_| file.read_exact(&mut jump))
        .map_err(|e| BootError::OpenKernel(name.clone(), e))?;
    let header_end = 0x202 + usize::from(jump[1]);
    let mut header = vec![0u8; header_end - 0x1f1];
    file.seek(SeekFrom::Start(0x1f1))
        .and_then(|_| file.read_exact(&mut header))
        .map_err(|e| BootError::OpenKernel(name, e))?;
    Ok(KernelImage {
        // The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
        entry: result.kernel_load.0 + 0x200,
        protocol: BootProtocol::Linux64,
        end: result.kernel_end,
        setup_header: Some(header),
    })
}

/// Loads the initrd at the top of low RAM, page aligned, above the kernel.
pub fn load_initrd(mem: &GuestMemory, path: &Path, kernel_end: u64) -> Result<Initrd, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::LoadInitrd(name.clone(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::LoadInitrd(name.clone(), e))?
        .len();
    let low_end = (GuestMemoryBackend::last_addr(mem).0 + 1).min(MMIO_GAP_START);
    let too_big = || {
        BootError::LoadInitrd(
            name.clone(),
            std::io::Error::other("initrd does not fit in low memory"),
        )
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::LoadInitrd(name, std::io::Error::other(e.to_string())))?;
    Ok(Initrd { addr, size })
}

/// Builds the full command line: the configured one, then one `virtio_mmio.device=` entry per
/// device (`(slot address, irq)`), the way QEMU's `-M microvm` announces them.
pub fn build_cmdline(base: &str, virtio_devices: &[(u64, u32)]) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline.insert_str(base).map_err(BootError::Cmdline)?;
    for &(addr, irq) in virtio_devices {
        cmdline
            .add_virtio_mmio_device(devices::transport::MMIO_SIZE, GuestAddress(addr), irq, None)
            .map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Writes the command line at [`CMDLINE_ADDR`]; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(|_| {
        BootError::WriteMemory(
            "command line",
            vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(CMDLINE_ADDR)),
        )
    })?;
    let len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    Ok(len)
}

/// e820 entry types.
const E820_RAM: u32 = 1;

/// The guest's RAM map: low RAM below the EBDA, then from 1 MiB, then above 4 GiB.
pub fn memory_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    for (start, len) in ram_ranges(mem_size) {
        if start == 0 {
            map.push((HIMEM_START, len - HIMEM_START, E820_RAM));
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

/// Offsets in `struct boot_params` (Documentation/arch/x86/zero-page.rst, boot.rst).
mod zero_page {
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SETUP_HEADER: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER: usize = 0x202;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_MAX: usize = 128;
    pub const SIZE: usize = 4096;
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// The Linux `boot_params` page.
pub fn build_zero_page(
    kernel: &KernelImage,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    memory_map: &[(u64, u64, u32)],
) -> Vec<u8> {
    use zero_page::*;
    let mut zp = vec![0u8; SIZE];
    if let Some(header) = &kernel.setup_header {
        let n = header.len().min(E820_TABLE - SETUP_HEADER);
        put(&mut zp, SETUP_HEADER, &header[..n]);
    }
    put(&mut zp, BOOT_FLAG, &0xaa55u16.to_le_bytes());
    put(&mut zp, HEADER, &0x5372_6448u32.to_le_bytes()); // "HdrS"
    zp[TYPE_OF_LOADER] = 0xff; // undefined boot loader
    put(&mut zp, CMD_LINE_PTR, &(CMDLINE_ADDR as u32).to_le_bytes());
    put(&mut zp, CMDLINE_SIZE, &(cmdline_len as u32).to_le_bytes());
    put(&mut zp, KERNEL_ALIGNMENT, &0x0100_0000u32.to_le_bytes());
    if let Some(initrd) = initrd {
        put(&mut zp, RAMDISK_IMAGE, &(initrd.addr as u32).to_le_bytes());
        put(&mut zp, RAMDISK_SIZE, &(initrd.size as u32).to_le_bytes());
    }
    let entries = memory_map.len().min(E820_MAX);
    zp[E820_ENTRIES] = entries as u8;
    for (i, (addr, size, kind)) in memory_map.iter().take(entries).enumerate() {
        let off = E820_TABLE + i * 20;
        put(&mut zp, off, &addr.to_le_bytes());
        put(&mut zp, off + 8, &size.to_le_bytes());
        put(&mut zp, off + 16, &kind.to_le_bytes());
    }
    zp
}

/// The PVH `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h), its memory map and
/// module list, as `(address, bytes)` blocks to write.
pub fn build_pvh_info(
    initrd: Option<Initrd>,
    memory_map: &[(u64, u64, u32)],
) -> Vec<(u64, Vec<u8>)> {
    let mut info = vec![0u8; 56];
    put(&mut info, 0, &0x336e_c578u32.to_le_bytes()); // magic
    put(&mut info, 4, &1u32.to_le_bytes()); // version
    let mut blocks = Vec::new();
    if let Some(initrd) = initrd {
        put(&mut info, 12, &1u32.to_le_bytes()); // nr_modules
        put(&mut info, 16, &PVH_MODLIST_ADDR.to_le_bytes());
        let mut module = vec![0u8; 32];
        put(&mut module, 0, &initrd.addr.to_le_bytes());
        put(&mut module, 8, &initrd.size.to_le_bytes());
        blocks.push((PVH_MODLIST_ADDR, module));
    }
    put(&mut info, 24, &CMDLINE_ADDR.to_le_bytes());
    put(&mut info, 40, &PVH_MEMMAP_ADDR.to_le_bytes());
    put(&mut info, 48, &(memory_map.len() as u32).to_le_bytes());
    let mut map = Vec::new();
    for (addr, size, kind) in memory_map {
        map.extend_from_slice(&addr.to_le_bytes());
        map.extend_from_slice(&size.to_le_bytes());
        map.extend_from_slice(&kind.to_le_bytes());
        map.extend_from_slice(&0u32.to_le_bytes());
    }
    blocks.push((PVH_INFO_ADDR, info));
    blocks.push((PVH_MEMMAP_ADDR, map));
    blocks
}

/// Writes the boot information for `kernel`'s protocol.
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel: &KernelImage,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    mem_size: u64,
) -> Result<(), BootError> {
    let map = memory_map(mem_size);
    match kernel.protocol {
        BootProtocol::Linux64 => {
            let zp = build_zero_page(kernel, cmdline_len, initrd, &map);
            mem.write_slice(&zp, GuestAddress(ZERO_PAGE_ADDR))
                .map_err(|e| BootError::WriteMemory("boot_params", e))
        }
        BootProtocol::Pvh => {
            for (addr, bytes) in build_pvh_info(initrd, &map) {
                mem.write_slice(&bytes, GuestAddress(addr))
                    .map_err(|e| BootError::WriteMemory("hvm_start_info", e))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_memory_map_skips_bios_area_and_mmio_gap() {
        assert_eq!(
            memory_map(256 << 20),
            vec![
                (0, EBDA_START, 1),
                (HIMEM_START, (256 << 20) - HIMEM_START, 1)
            ]
        );
        let big = memory_map(5 << 30);
        assert_eq!(big[2], (4 << 30, 2 << 30, 1));
    }

    #[test]
    fn test_zero_page_fields() {
        let kernel = KernelImage {
            entry: 0x100000,
            protocol: BootProtocol::Linux64,
            end: 0x200000,
            setup_header: None,
        };
        let zp = build_zero_page(
            &kernel,
            42,
            Some(Initrd {
                addr: 0x800_0000,
                size: 0x1000,
            }),
            &memory_map(64 << 20),
        );
        assert_eq!(&zp[0x1fe..0x200], &[0x55, 0xaa]);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(
            u32::from_le_bytes(zp[0x228..0x22c].try_into().unwrap()),
            CMDLINE_ADDR as u32
        );
        assert_eq!(u32::from_le_bytes(zp[0x238..0x23c].try_into().unwrap()), 42);
        assert_eq!(
            u32::from_le_bytes(zp[0x218..0x21c].try_into().unwrap()),
            0x800_0000
        );
        assert_eq!(zp[0x1e8], 2);
        assert_eq!(
            u64::from_le_bytes(zp[0x2d0 + 20..0x2d0 + 28].try_into().unwrap()),
            HIMEM_START
        );
    }

    #[test]
    fn test_cmdline_announces_virtio_mmio_devices() {
        let c = build_cmdline("console=ttyS0", &[(0xd000_0000, 5), (0xd000_1000, 6)]).unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(
            s,
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn test_pvh_info_layout() {
        let blocks = build_pvh_info(None, &memory_map(64 << 20));
        let (addr, info) = &blocks[0];
        assert_eq!(*addr, PVH_INFO_ADDR);
        assert_eq!(
            u32::from_le_bytes(info[0..4].try_into().unwrap()),
            0x336e_c578
        );
        assert_eq!(u32::from_le_bytes(info[48..52].try_into().unwrap()), 2);
        assert_eq!(blocks[1].1.len(), 48);
    }
}
