//! KVM smoke tests of the hypervisor layer: real-mode code doing port and MMIO I/O, and kicks
//! (x86_64 guest code: the aarch64 backend is tested by `tests/tests/nested_aarch64.rs`).

#![cfg(target_arch = "x86_64")]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hypervisor::x86_64::Segment;
use hypervisor::{Hypervisor, MemoryFlags, Vm, VmConfig, VmExit};

/// The KVM backend, or `None` (with the reason printed) when `/dev/kvm` is unusable. Panics
/// instead of skipping when `REQUIRE_KVM=1`.
fn require_kvm() -> Option<Box<dyn Hypervisor>> {
    match hypervisor::new() {
        Ok(h) => Some(h),
        Err(e) => {
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("REQUIRE_KVM=1 but the hypervisor is unusable: {e}");
            }
            eprintln!("skipped: the hypervisor is unusable: {e}");
            None
        }
    }
}

/// Anonymous memory mapped for a test guest.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Self {
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: the range is inside the mapping (checked above) and the guest is not running.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the VM is dropped before.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A VM whose vCPU starts in real mode at 0x1000 running `code`.
fn real_mode_vm(h: &dyn Hypervisor, mem: &Mapping, code: &[u8]) -> Box<dyn Vm> {
    let vm = h.create_vm(&VmConfig { vcpu_count: 1 }).expect("create vm");
    mem.write(0x1000, code);
    // SAFETY: the mapping outlives the VM in every test (declared before it).
    unsafe { vm.map_memory(0, 0, mem.ptr, mem.len as u64, MemoryFlags::default()) }.expect("map");
    vm
}

fn setup_real_mode(vcpu: &dyn hypervisor::Vcpu) {
    let mut sregs = vcpu.sregs().expect("sregs");
    sregs.cs = Segment {
        base: 0,
        selector: 0,
        ..sregs.cs
    };
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.regs().expect("regs");
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("set regs");
}

#[test]
fn test_kvm_port_and_mmio_exits() {
    let Some(h) = require_kvm() else { return };
    let mem = Mapping::new(0x2000);
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'K', // mov al, 'K'
        0xee, // out dx, al
        0xa2, 0x00, 0x30, // mov [0x3000], al  (unmapped: MMIO write)
        0xa0, 0x00, 0x30, // mov al, [0x3000]  (MMIO read)
        0xe6, 0x80, // out 0x80, al
        0xeb, 0xfe, // jmp $
    ];
    let vm = real_mode_vm(h.as_ref(), &mem, &code);
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    setup_real_mode(vcpu.as_ref());
    match vcpu.run().expect("run") {
        VmExit::IoOut { port: 0x3f8, data } => assert_eq!(data, b"K"),
        other => panic!("unexpected exit {other:?}"),
    }
    match vcpu.run().expect("run") {
        VmExit::MmioWrite { addr: 0x3000, data } => assert_eq!(data, b"K"),
        other => panic!("unexpected exit {other:?}"),
    }
    match vcpu.run().expect("run") {
        VmExit::MmioRead { addr: 0x3000, data } => data.copy_from_slice(b"Z"),
        other => panic!("unexpected exit {other:?}"),
    }
    match vcpu.run().expect("run") {
        VmExit::IoOut { port: 0x80, data } => assert_eq!(data, b"Z"),
        other => panic!("unexpected exit {other:?}"),
    }
}

#[test]
fn test_kvm_kick_interrupts_spinning_guest() {
    let Some(h) = require_kvm() else { return };
    let mem = Mapping::new(0x2000);
    let vm = real_mode_vm(h.as_ref(), &mem, &[0xeb, 0xfe]);
    let (tx, rx) = mpsc::channel();
    let vm: std::sync::Arc<dyn Vm> = std::sync::Arc::from(vm);
    let vcpu_vm = vm.clone();
    let handle = std::thread::spawn(move || {
        let mut vcpu = vcpu_vm.create_vcpu(0).expect("vcpu");
        setup_real_mode(vcpu.as_ref());
        tx.send(vcpu.kicker()).expect("send kicker");
        // Two runs, each ended by a kick (one likely during KVM_RUN, one possibly before it).
        for _ in 0..2 {
            match vcpu.run().expect("run") {
                VmExit::Interrupted => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
    });
    let kicker = rx.recv().expect("kicker");
    // A kick is a level, not a count: two kicks before the thread reaches its first run
    // end that one run only (a loaded CI machine saw the second run spin forever when the
    // test kicked exactly twice). So kick until both runs have been interrupted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the spinning vCPU was not interrupted twice by kicks every 10 ms for 60 s"
        );
        kicker.kick();
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().expect("vcpu thread");
}

#[test]
fn test_kvm_supported_cpuid_has_basic_leaves() {
    let Some(h) = require_kvm() else { return };
    let cpuid = h.supported_cpuid().expect("cpuid");
    assert!(cpuid.iter().any(|e| e.function == 0));
    let leaf1 = cpuid.iter().find(|e| e.function == 1).expect("leaf 1");
    // The backend adds the TSC-deadline timer, which KVM leaves out of its list.
    let has_tsc_deadline = kvm_ioctls::Kvm::new()
        .unwrap()
        .check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    assert_eq!(
        leaf1.ecx & (1 << 24) != 0,
        has_tsc_deadline,
        "leaf 1 ecx {:#x}",
        leaf1.ecx
    );
    let caps = h.capabilities();
    assert_eq!(caps.backend, "kvm");
    assert!(caps.max_vcpus >= 1);
}

/// A kick that lands while the vCPU thread is outside KVM_RUN (here blocked in a read) is not
/// lost, and does not make that thread's system call fail with EINTR.
#[test]
fn test_kvm_kick_outside_run_is_kept_and_restarts_syscalls() {
    let Some(h) = require_kvm() else { return };
    let mem = Mapping::new(0x2000);
    let vm = real_mode_vm(h.as_ref(), &mem, &[0xeb, 0xfe]);
    let vm: std::sync::Arc<dyn Vm> = std::sync::Arc::from(vm);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let (tx, rx) = mpsc::channel();
    let vcpu_vm = vm.clone();
    let handle = std::thread::spawn(move || {
        let mut vcpu = vcpu_vm.create_vcpu(0).expect("vcpu");
        setup_real_mode(vcpu.as_ref());
        tx.send(vcpu.kicker()).expect("send kicker");
        let mut byte = 0u8;
        // SAFETY: reads one byte into `byte`, owned by this frame, from the pipe's read end.
        let n = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
        let err = std::io::Error::last_os_error();
        assert_eq!(n, 1, "the read was interrupted: {err}");
        // The kick that came during the read makes this run return at once.
        match vcpu.run().expect("run") {
            VmExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
    });
    let kicker = rx.recv().expect("kicker");
    // Let the thread block in its read.
    std::thread::sleep(Duration::from_millis(100));
    kicker.kick();
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: writes one byte from a static to the pipe's write end.
    assert_eq!(unsafe { libc::write(write_fd, b"x".as_ptr().cast(), 1) }, 1);
    handle.join().expect("vcpu thread");
    // SAFETY: closes the two descriptors pipe made, used by no one now.
    unsafe {
        libc::close(read_fd);
        libc::close(write_fd);
    }
}

/// Kicking a vCPU whose thread has dropped it and exited is a no-op (it used to signal a
/// `pthread_t` that could be stale by then).
#[test]
fn test_kvm_kick_after_vcpu_thread_exit_is_harmless() {
    let Some(h) = require_kvm() else { return };
    let mem = Mapping::new(0x2000);
    let vm: std::sync::Arc<dyn Vm> =
        std::sync::Arc::from(real_mode_vm(h.as_ref(), &mem, &[0xeb, 0xfe]));
    let mut kickers = Vec::new();
    for id in 0..8u8 {
        let vcpu_vm = vm.clone();
        let kicker = std::thread::spawn(move || vcpu_vm.create_vcpu(id).expect("vcpu").kicker())
            .join()
            .expect("vcpu thread");
        kickers.push(kicker);
    }
    // New threads may reuse the ids of the old ones: none of them is disturbed.
    let busy: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200))))
        .collect();
    for _ in 0..100 {
        for k in &kickers {
            k.kick();
        }
    }
    for t in busy {
        t.join().expect("busy thread");
    }
}
