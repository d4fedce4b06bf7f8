//! The Intel MultiProcessor table (MP spec 1.4), which tells Linux about the vCPUs, the IOAPIC
//! and how ISA interrupts are wired, without ACPI.

use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};
use devices::GuestMemory;

/// Where the floating pointer structure goes (the last KiB of base memory, scanned by Linux).
pub const MPTABLE_ADDR: u64 = EBDA_START;

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and FPU + APIC feature flags, as Firecracker reports them.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4);
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table bytes for `cpus` vCPUs, to be written at [`MPTABLE_ADDR`].
pub fn build(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = cpu;
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    // The IOAPIC.
    let mut ioapic = [2u8, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;
    // ISA IRQ i -> IOAPIC pin i, conforming polarity and trigger.
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI to all LAPICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_ADDR + 16;
    let mut header = [0u8; 44];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header[6] = MPC_SPEC;
    header[8..16].copy_from_slice(b"RMACHINE");
    header[16..28].copy_from_slice(b"000000000000");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = [0u8; 16];
    floating[0..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = MPC_SPEC;
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&table);
    out
}

/// Writes the MP table for `cpus` vCPUs.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<(), BootError> {
    mem.write_slice(&build(cpus), GuestAddress(MPTABLE_ADDR))
        .map_err(BootError::MpTable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mptable_checksums_and_counts() {
        let t = build(4);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // The first processor is the boot processor.
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
    }

    #[test]
    fn test_mptable_fits_below_640k_for_max_cpus() {
        let t = build(crate::config::MAX_VCPUS);
        assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa0000);
    }
}
