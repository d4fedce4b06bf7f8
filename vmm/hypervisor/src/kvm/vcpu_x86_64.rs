//! The x86_64 register accessors of a [`KvmVcpu`].

use std::sync::Arc;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId,
    Msrs,
};

use super::vcpu::KvmVcpu;
use crate::x86_64::{
    CpuidEntry, DescriptorTable, FpuState, MsrEntry, Segment, SpecialRegisters, StandardRegisters,
};
use crate::{HypervisorError, Result, Vcpu, VcpuKicker, VmExit};

/// What the x86_64 accessors need besides the vCPU fd.
pub(in crate::kvm) struct VcpuArch {
    /// The MSRs [`Vcpu::save_state`] saves.
    pub msrs_to_save: Arc<Vec<u32>>,
}

/// Offset of the LVT LINT0 register in the local APIC page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the local APIC page.
const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT.
const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI.
const APIC_MODE_NMI: u32 = 0x4;

fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: s.unusable.into(),
        padding: 0,
    }
}

fn segment_from_kvm(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn dtable_to_kvm(t: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

fn lapic_reg(regs: &[libc::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [libc::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as libc::c_char;
    }
}

/// An LVT value with the delivery mode (bits 8..11) replaced.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit<'_>> {
        self.run_exit()
    }

    fn kicker(&self) -> Box<dyn VcpuKicker> {
        self.new_kicker()
    }

    fn regs(&self) -> Result<StandardRegisters> {
        let r = self.fd.get_regs().map_err(Self::state_err("get_regs"))?;
        Ok(StandardRegisters {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        })
    }

    fn set_regs(&self, r: &StandardRegisters) -> Result<()> {
        let regs = kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        };
        self.fd.set_regs(&regs).map_err(Self::state_err("set_regs"))
    }

    fn sregs(&self) -> Result<SpecialRegisters> {
        let s = self.fd.get_sregs().map_err(Self::state_err("get_sregs"))?;
        Ok(SpecialRegisters {
            cs: segment_from_kvm(&s.cs),
            ds: segment_from_kvm(&s.ds),
            es: segment_from_kvm(&s.es),
            fs: segment_from_kvm(&s.fs),
            gs: segment_from_kvm(&s.gs),
            ss: segment_from_kvm(&s.ss),
            tr: segment_from_kvm(&s.tr),
            ldt: segment_from_kvm(&s.ldt),
            gdt: DescriptorTable {
                base: s.gdt.base,
                limit: s.gdt.limit,
            },
            idt: DescriptorTable {
                base: s.idt.base,
                limit: s.idt.limit,
            },
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
        })
    }

    fn set_sregs(&self, s: &SpecialRegisters) -> Result<()> {
        // Start from the current state to keep the pending-interrupt bitmap.
        let current: kvm_sregs = self.fd.get_sregs().map_err(Self::state_err("get_sregs"))?;
        let sregs = kvm_sregs {
            cs: segment_to_kvm(&s.cs),
            ds: segment_to_kvm(&s.ds),
            es: segment_to_kvm(&s.es),
            fs: segment_to_kvm(&s.fs),
            gs: segment_to_kvm(&s.gs),
            ss: segment_to_kvm(&s.ss),
            tr: segment_to_kvm(&s.tr),
            ldt: segment_to_kvm(&s.ldt),
            gdt: dtable_to_kvm(&s.gdt),
            idt: dtable_to_kvm(&s.idt),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: current.interrupt_bitmap,
        };
        self.fd
            .set_sregs(&sregs)
            .map_err(Self::state_err("set_sregs"))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        let kfpu = kvm_fpu {
            fcw: fpu.fcw,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        };
        self.fd.set_fpu(&kfpu).map_err(Self::state_err("set_fpu"))
    }

    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let kvm_msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::VcpuState {
            op: "set_msrs",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let written = self
            .fd
            .set_msrs(&kvm_msrs)
            .map_err(Self::state_err("set_msrs"))?;
        if written != entries.len() {
            let failed = entries.get(written).map(|e| e.index).unwrap_or_default();
            return Err(HypervisorError::VcpuState {
                op: "set_msrs",
                source: std::io::Error::other(format!("msr {failed:#x} was refused")),
            });
        }
        Ok(())
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let kvm_entries: Vec<kvm_cpuid_entry2> = entries
            .iter()
            .map(|e| kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                ..Default::default()
            })
            .collect();
        let cpuid = CpuId::from_entries(&kvm_entries).map_err(|_| HypervisorError::VcpuState {
            op: "set_cpuid",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(Self::state_err("set_cpuid"))
    }

    fn setup_lapic(&self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().map_err(Self::state_err("get_lapic"))?;
        let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
        set_lapic_reg(
            &mut lapic.regs,
            APIC_LVT0,
            with_delivery_mode(lvt0, APIC_MODE_EXTINT),
        );
        let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
        set_lapic_reg(
            &mut lapic.regs,
            APIC_LVT1,
            with_delivery_mode(lvt1, APIC_MODE_NMI),
        );
        self.fd
            .set_lapic(&lapic)
            .map_err(Self::state_err("set_lapic"))
    }

    fn save_state(&self) -> Result<crate::x86_64::VcpuState> {
        super::state::save_vcpu(&self.fd, &self.arch.msrs_to_save)
    }

    fn restore_state(&self, state: &crate::x86_64::VcpuState) -> Result<()> {
        super::state::restore_vcpu(&self.fd, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_with_delivery_mode() {
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }

    #[test]
    fn test_lapic_reg_roundtrip() {
        let mut regs = [0 as libc::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&regs, APIC_LVT1), 0xdead_beef);
    }
}
