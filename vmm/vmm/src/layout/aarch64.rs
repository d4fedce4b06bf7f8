//! The aarch64 guest physical memory map: QEMU `virt`'s places for the GIC, the UART and the
//! virtio-mmio transports (what its users and Linux's device trees expect), RAM from 2 GiB.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)          hypervisor::aarch64::GIC_DIST_ADDR
//! 0x080a_0000  GICv3 redistributors (128 KiB/vCPU) hypervisor::aarch64::GIC_REDIST_ADDR
//! 0x0900_0000  PL011 UART (4 KiB), SPI 1
//! 0x0a00_0000  virtio-mmio slots (4 KiB each), SPIs 16..
//! 0x8000_0000  RAM: the kernel Image at its start (+ text_offset), the initrd after it,
//!              the device tree in the last 2 MiB
//! ```

pub use hypervisor::aarch64::{GIC_DIST_ADDR, GIC_DIST_SIZE, GIC_REDIST_ADDR, GIC_SPI_COUNT};

/// Start of RAM.
pub const RAM_START: u64 = 0x8000_0000;
/// The arm64 boot protocol wants the device tree within the first 512 GiB.
pub const FDT_LIMIT: u64 = 512 << 30;
/// The PL011 UART's registers.
pub const SERIAL_ADDR: u64 = 0x0900_0000;
/// Size of the UART's window.
pub const SERIAL_SIZE: u64 = 0x1000;
/// The UART's SPI.
pub const SERIAL_IRQ: u32 = 1;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// SPI of virtio-mmio slot 0.
pub const VIRTIO_IRQ_BASE: u32 = 16;
/// Number of virtio-mmio slots (one SPI each), as on x86.
pub const VIRTIO_SLOTS: u8 = 19;
/// Room for the command line (arm64's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The device tree's room at the end of RAM (the boot protocol's limit for its size).
pub const FDT_MAX_SIZE: u64 = 2 << 20;

/// Guest physical address of virtio-mmio slot `slot`.
pub fn virtio_mmio_addr(slot: u8) -> u64 {
    VIRTIO_MMIO_BASE + u64::from(slot) * devices::transport::MMIO_SIZE
}

/// SPI of virtio-mmio slot `slot`.
pub fn virtio_irq(slot: u8) -> u32 {
    VIRTIO_IRQ_BASE + u32::from(slot)
}

/// RAM ranges `(start, len)` for `mem_size` bytes of guest memory: one, from [`RAM_START`].
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    vec![(RAM_START, mem_size)]
}

/// Where the device tree goes: the last [`FDT_MAX_SIZE`] of RAM (2 MiB aligned), or of the
/// first [`FDT_LIMIT`] bytes of the address space when RAM goes beyond.
pub fn fdt_addr(mem_size: u64) -> u64 {
    RAM_START
        .saturating_add(mem_size)
        .min(FDT_LIMIT)
        .saturating_sub(FDT_MAX_SIZE)
        & !(FDT_MAX_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fixed places do not overlap (checked when compiling).
    const _: () = assert!(hypervisor::aarch64::GIC_REDIST_END <= SERIAL_ADDR);
    const _: () = assert!(SERIAL_ADDR + SERIAL_SIZE <= VIRTIO_MMIO_BASE);
    const _: () = assert!(SERIAL_IRQ < VIRTIO_IRQ_BASE);

    #[test]
    fn test_virtio_slots_fit_below_ram_and_the_spis() {
        assert!(virtio_mmio_addr(VIRTIO_SLOTS) <= RAM_START);
        assert!(virtio_irq(VIRTIO_SLOTS - 1) < GIC_SPI_COUNT);
    }

    #[test]
    fn test_ram_and_fdt() {
        assert_eq!(ram_ranges(512 << 20), vec![(RAM_START, 512 << 20)]);
        assert_eq!(fdt_addr(512 << 20), RAM_START + (510 << 20));
        assert_eq!(fdt_addr(1 << 40), FDT_LIMIT - FDT_MAX_SIZE);
        assert_eq!(fdt_addr(u64::MAX), FDT_LIMIT - FDT_MAX_SIZE);
        assert_eq!(virtio_mmio_addr(2), 0x0a00_2000);
    }
}
