//! CPUID: what KVM supports, filtered by the VMM (topology, hypervisor bit, and features the
//! configuration hides).

use hypervisor::x86_64::CpuidEntry;

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One feature bit, named as Linux names it in `/proc/cpuinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Name.
    pub name: &'static str,
    /// Leaf.
    pub leaf: u32,
    /// Sub-leaf.
    pub subleaf: u32,
    /// Register.
    pub register: Register,
    /// Bit.
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, register: Register, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        register,
        bit,
    }
}

/// Features the configuration may hide.
pub const FEATURES: &[Feature] = &[
    f("vmx", 1, 0, Register::Ecx, 5),
    f("cx16", 1, 0, Register::Ecx, 13),
    f("pdcm", 1, 0, Register::Ecx, 15),
    f("pcid", 1, 0, Register::Ecx, 17),
    f("sse4_1", 1, 0, Register::Ecx, 19),
    f("sse4_2", 1, 0, Register::Ecx, 20),
    f("x2apic", 1, 0, Register::Ecx, 21),
    f("movbe", 1, 0, Register::Ecx, 22),
    f("popcnt", 1, 0, Register::Ecx, 23),
    f("tsc_deadline_timer", 1, 0, Register::Ecx, 24),
    f("aes", 1, 0, Register::Ecx, 25),
    f("xsave", 1, 0, Register::Ecx, 26),
    f("avx", 1, 0, Register::Ecx, 28),
    f("f16c", 1, 0, Register::Ecx, 29),
    f("tsc_deadline_timer", 1, 0, Register::Ecx, 24),
    f("rdrand", 1, 0, Register::Ecx, 30),
    f("fsgsbase", 7, 0, Register::Ebx, 0),
    f("bmi1", 7, 0, Register::Ebx, 3),
    f("hle", 7, 0, Register::Ebx, 4),
    f("avx2", 7, 0, Register::Ebx, 5),
    f("smep", 7, 0, Register::Ebx, 7),
    f("bmi2", 7, 0, Register::Ebx, 8),
    f("erms", 7, 0, Register::Ebx, 9),
    f("invpcid", 7, 0, Register::Ebx, 10),
    f("rtm", 7, 0, Register::Ebx, 11),
    f("mpx", 7, 0, Register::Ebx, 14),
    f("avx512f", 7, 0, Register::Ebx, 16),
    f("avx512dq", 7, 0, Register::Ebx, 17),
    f("rdseed", 7, 0, Register::Ebx, 18),
    f("adx", 7, 0, Register::Ebx, 19),
    f("smap", 7, 0, Register::Ebx, 20),
    f("avx512ifma", 7, 0, Register::Ebx, 21),
    f("clflushopt", 7, 0, Register::Ebx, 23),
    f("clwb", 7, 0, Register::Ebx, 24),
    f("avx512cd", 7, 0, Register::Ebx, 28),
    f("sha_ni", 7, 0, Register::Ebx, 29),
    f("avx512bw", 7, 0, Register::Ebx, 30),
    f("avx512vl", 7, 0, Register::Ebx, 31),
    f("avx512vbmi", 7, 0, Register::Ecx, 1),
    f("umip", 7, 0, Register::Ecx, 2),
    f("pku", 7, 0, Register::Ecx, 3),
    f("waitpkg", 7, 0, Register::Ecx, 5),
    f("avx512_vbmi2", 7, 0, Register::Ecx, 6),
    f("gfni", 7, 0, Register::Ecx, 8),
    f("vaes", 7, 0, Register::Ecx, 9),
    f("vpclmulqdq", 7, 0, Register::Ecx, 10),
    f("avx512_vnni", 7, 0, Register::Ecx, 11),
    f("avx512_bitalg", 7, 0, Register::Ecx, 12),
    f("avx512_vpopcntdq", 7, 0, Register::Ecx, 14),
    f("la57", 7, 0, Register::Ecx, 16),
    f("rdpid", 7, 0, Register::Ecx, 22),
    f("movdiri", 7, 0, Register::Ecx, 27),
    f("movdir64b", 7, 0, Register::Ecx, 28),
    f("avx512_4vnniw", 7, 0, Register::Edx, 2),
    f("avx512_vp2intersect", 7, 0, Register::Edx, 8),
    f("serialize", 7, 0, Register::Edx, 14),
    f("tsxldtrk", 7, 0, Register::Edx, 16),
    f("amx_bf16", 7, 0, Register::Edx, 22),
    f("avx512_fp16", 7, 0, Register::Edx, 23),
    f("amx_tile", 7, 0, Register::Edx, 24),
    f("amx_int8", 7, 0, Register::Edx, 25),
    f("xsaveopt", 0xd, 1, Register::Eax, 0),
    f("xsavec", 0xd, 1, Register::Eax, 1),
    f("xsaves", 0xd, 1, Register::Eax, 3),
    f("svm", 0x8000_0001, 0, Register::Ecx, 2),
    f("pdpe1gb", 0x8000_0001, 0, Register::Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Register::Edx, 27),
];

impl Feature {
    /// The feature called `name` (case-insensitive).
    pub fn by_name(name: &str) -> Option<Feature> {
        FEATURES
            .iter()
            .copied()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

fn reg_mut(entry: &mut CpuidEntry, r: Register) -> &mut u32 {
    match r {
        Register::Eax => &mut entry.eax,
        Register::Ebx => &mut entry.ebx,
        Register::Ecx => &mut entry.ecx,
        Register::Edx => &mut entry.edx,
    }
}

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// The CPUID of vCPU `vcpu_id` of `vcpu_count`: `supported` with the topology made consistent
/// (APIC ids, logical processor count), the hypervisor bit set, and `disabled` features
/// cleared.
pub fn filter(
    supported: &[CpuidEntry],
    vcpu_id: u8,
    vcpu_count: u8,
    disabled: &[Feature],
) -> Vec<CpuidEntry> {
    let mut entries = supported.to_vec();
    for entry in &mut entries {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(vcpu_id) << 24)
                    | (u32::from(vcpu_count) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if vcpu_count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Extended topology: x2APIC id of this vCPU.
            0xb | 0x1f => entry.edx = u32::from(vcpu_id),
            _ => {}
        }
        for feature in disabled {
            let subleaf_matches =
                entry.flags & CpuidEntry::FLAG_INDEXED == 0 || entry.index == feature.subleaf;
            if entry.function == feature.leaf && subleaf_matches {
                *reg_mut(entry, feature.register) &= !(1u32 << feature.bit);
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> Vec<CpuidEntry> {
        vec![
            CpuidEntry {
                function: 1,
                ebx: 0x0001_0800,
                ecx: 1 << 28,
                edx: 1 << 28,
                ..Default::default()
            },
            CpuidEntry {
                function: 7,
                index: 0,
                flags: CpuidEntry::FLAG_INDEXED,
                ebx: (1 << 16) | (1 << 5),
                ..Default::default()
            },
            CpuidEntry {
                function: 7,
                index: 1,
                flags: CpuidEntry::FLAG_INDEXED,
                ebx: 1 << 16,
                ..Default::default()
            },
            CpuidEntry {
                function: 0xb,
                index: 0,
                flags: CpuidEntry::FLAG_INDEXED,
                edx: 7,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn test_topology_and_hypervisor_bit() {
        let out = filter(&supported(), 3, 4, &[]);
        assert_eq!(out[0].ebx >> 24, 3);
        assert_eq!((out[0].ebx >> 16) & 0xff, 4);
        assert_eq!(out[0].ebx & 0xffff, 0x0800);
        assert_ne!(out[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(out[3].edx, 3);
        let single = filter(&supported(), 0, 1, &[]);
        assert_eq!(single[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn test_disable_features_masks_only_the_right_subleaf() {
        let out = filter(
            &supported(),
            0,
            1,
            &[
                Feature::by_name("avx512f").unwrap(),
                Feature::by_name("AVX").unwrap(),
            ],
        );
        assert_eq!(out[1].ebx, 1 << 5);
        assert_eq!(out[2].ebx, 1 << 16);
        assert_eq!(out[0].ecx & (1 << 28), 0);
        assert!(Feature::by_name("nope").is_none());
        // What PVM's instruction emulator cannot do can be hidden too.
        let mut with_cx16_popcnt = supported();
        with_cx16_popcnt[0].ecx |= (1 << 13) | (1 << 23);
        let out = filter(
            &with_cx16_popcnt,
            0,
            1,
            &[
                Feature::by_name("cx16").unwrap(),
                Feature::by_name("popcnt").unwrap(),
            ],
        );
        assert_eq!(out[0].ecx & ((1 << 13) | (1 << 23)), 0);
        assert_ne!(out[0].ecx & (1 << 28), 0);
    }
}
