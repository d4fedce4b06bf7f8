//! The x86_64 guest physical memory map (the Firecracker/microvm layout).

/// GDT used at boot.
pub const GDT_ADDR: u64 = 0x500;
/// IDT (empty) used at boot.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map, after the start info.
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6f00;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, then one PDPT, then four page directories (identity map of 4 GiB
/// with 2 MiB pages, so that boot code reaches both RAM and the MMIO window).
pub const PML4_ADDR: u64 = 0x9000;
/// The page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of four page directories.
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line (Linux reads at most 2048 bytes on x86, but keeps the rest
/// visible through boot_params).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; RAM below it is usable, the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First IOAPIC pin for virtio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// Number of virtio-mmio slots (one IOAPIC pin each).
pub const VIRTIO_SLOTS: u8 = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as u8;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// COM1 I/O ports and IRQ.
pub const SERIAL_PORT: u64 = 0x3f8;
/// COM1 interrupt.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 I/O ports (0x60..=0x64) and IRQ.
pub const I8042_PORT: u64 = 0x60;
/// i8042 interrupt.
pub const I8042_IRQ: u32 = 1;
/// CMOS/RTC I/O ports.
pub const CMOS_PORT: u64 = 0x70;

/// Guest physical address of virtio-mmio slot `slot`.
pub fn virtio_mmio_addr(slot: u8) -> u64 {
    VIRTIO_MMIO_BASE + u64::from(slot) * devices::transport::MMIO_SIZE
}

/// IOAPIC pin of virtio-mmio slot `slot`.
pub fn virtio_irq(slot: u8) -> u32 {
    VIRTIO_IRQ_BASE + u32::from(slot)
}

/// RAM ranges `(start, len)` for `mem_size` bytes of guest memory: below the MMIO hole, then
/// above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ram_ranges_split_around_mmio_gap() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    }

    #[test]
    fn test_virtio_slots() {
        assert_eq!(virtio_mmio_addr(2), 0xd000_2000);
        assert_eq!(virtio_irq(VIRTIO_SLOTS - 1), IRQ_MAX);
    }
}
