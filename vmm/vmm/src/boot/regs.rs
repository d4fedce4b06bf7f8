//! The initial state of the boot vCPUs: GDT, identity page tables, segments, control
//! registers, MSRs, FPU and LAPIC.

use hypervisor::x86_64::{DescriptorTable, FpuState, MsrEntry, Segment, StandardRegisters};
use hypervisor::Vcpu;
use vm_memory::{Bytes, GuestAddress};

use super::loader::BootProtocol;
use super::BootError;
use crate::layout::*;
use devices::GuestMemory;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A flat GDT entry (`flags` holds the access byte and the high nibble flags).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
}

/// Null, code (64-bit for Linux, 32-bit for PVH), data, TSS.
fn gdt(protocol: BootProtocol) -> [u64; 4] {
    let code = match protocol {
        BootProtocol::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
        BootProtocol::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Writes the GDT, an empty IDT and (for the 64-bit protocol) identity page tables mapping the
/// first 4 GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemory, protocol: BootProtocol) -> Result<(), BootError> {
    let err = |what| move |e| BootError::WriteMemory(what, e);
    for (i, entry) in gdt(protocol).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(err("gdt"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(err("idt"))?;
    if protocol == BootProtocol::Linux64 {
        mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))
            .map_err(err("page tables"))?;
        for i in 0..4u64 {
            let pd = PD_ADDR + i * 0x1000;
            mem.write_obj(pd | 0x3, GuestAddress(PDPT_ADDR + i * 8))
                .map_err(err("page tables"))?;
            for j in 0..512u64 {
                let page = ((i * 512 + j) << 21) | 0x83; // present, writable, 2 MiB
                mem.write_obj(page, GuestAddress(pd + j * 8))
                    .map_err(err("page tables"))?;
            }
        }
    }
    Ok(())
}

/// MSRs set at boot (the Firecracker list): SYSENTER/SYSCALL MSRs cleared, fast strings on,
/// MTRRs enabled with write-back default.
pub fn boot_msrs() -> Vec<MsrEntry> {
    let msr = |index, data| MsrEntry { index, data };
    vec![
        msr(0x174, 0),             // IA32_SYSENTER_CS
        msr(0x175, 0),             // IA32_SYSENTER_ESP
        msr(0x176, 0),             // IA32_SYSENTER_EIP
        msr(0xc000_0081, 0),       // STAR
        msr(0xc000_0082, 0),       // LSTAR
        msr(0xc000_0083, 0),       // CSTAR
        msr(0xc000_0084, 0),       // SYSCALL_MASK
        msr(0xc000_0102, 0),       // KERNEL_GS_BASE
        msr(0x10, 0),              // IA32_TSC
        msr(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        msr(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ]
}

/// Sets registers, segments, control registers, MSRs, FPU and LAPIC of one vCPU for entry at
/// `entry` with `protocol`. Application processors get the same state; they wait for INIT/SIPI
/// in the in-kernel LAPIC anyway.
pub fn setup_vcpu(
    vcpu: &dyn Vcpu,
    id: u8,
    entry: u64,
    protocol: BootProtocol,
) -> Result<(), BootError> {
    let err = |source| BootError::Vcpu { id, source };
    vcpu.set_msrs(&boot_msrs()).map_err(err)?;
    vcpu.set_fpu(&FpuState::default()).map_err(err)?;

    let table = gdt(protocol);
    let mut sregs = vcpu.sregs().map_err(err)?;
    sregs.gdt = DescriptorTable {
        base: GDT_ADDR,
        limit: (table.len() * 8 - 1) as u16,
    };
    sregs.idt = DescriptorTable {
        base: IDT_ADDR,
        limit: 7,
    };
    sregs.cs = Segment::from_gdt_entry(table[1], 0x8);
    let data = Segment::from_gdt_entry(table[2], 0x10);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = Segment::from_gdt_entry(table[3], 0x18);
    let mut regs = StandardRegisters {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = (sregs.cr0 | CR0_PE) & !CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = PVH_INFO_ADDR;
        }
    }
    vcpu.set_sregs(&sregs).map_err(err)?;
    vcpu.set_regs(&regs).map_err(err)?;
    vcpu.setup_lapic().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_gdt_entries_match_firecracker() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn test_identity_page_tables_cover_4gib() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pd3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pd3, (PD_ADDR + 0x3000) | 3);
        // The last 2 MiB page below 4 GiB.
        let last: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
