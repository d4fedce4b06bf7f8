//! Guest memory registration keeps the mappings alive for the VM and its vCPUs, whatever the
//! caller does with its own handle of the memory. (The guest code is x86_64's.)

#![cfg(target_arch = "x86_64")]

mod support;

use hypervisor::x86_64::Segment;
use hypervisor::VmExit;
use support::require_kvm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Whether `/proc/self/maps` has a mapping starting at `addr`.
fn mapped(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        l.split('-')
            .next()
            .and_then(|start| usize::from_str_radix(start, 16).ok())
            == Some(addr)
    })
}

#[test]
fn test_registered_memory_outlives_the_callers_handle() {
    if !require_kvm() {
        return;
    }
    let hv = hypervisor::new().unwrap();
    let vm = hv
        .create_vm(&hypervisor::VmConfig { vcpu_count: 1 })
        .unwrap();
    let mem = vmm::memory::create(16 << 20, false).unwrap();
    // Real mode at 0x1000: out 0x80, 0x42; then spin.
    mem.write_slice(&[0xb0, 0x42, 0xe6, 0x80, 0xeb, 0xfe], GuestAddress(0x1000))
        .unwrap();
    let host_addr = mem.iter().next().unwrap().as_ptr() as usize;
    let vm = vmm::memory::register(vm, &mem).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    // The caller lets go of its memory and of the VM: the vCPU still runs on the mapping.
    drop(mem);
    drop(vm);
    assert!(mapped(host_addr), "guest memory was unmapped under the vm");
    let mut vcpu = vcpu;
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs = Segment {
        base: 0,
        selector: 0,
        ..sregs.cs
    };
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    match vcpu.run().expect("run") {
        VmExit::IoOut { port: 0x80, data } => assert_eq!(data, [0x42]),
        other => panic!("unexpected exit {other:?}"),
    }
    drop(vcpu);
    assert!(
        !mapped(host_addr),
        "the last vcpu gone, the memory is freed"
    );
}
