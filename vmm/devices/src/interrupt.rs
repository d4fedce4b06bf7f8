//! Interrupt lines from devices to the guest's interrupt controller.

use std::io;

/// One interrupt line (an IOAPIC pin on x86). Implemented by the VMM on top of the hypervisor.
pub trait InterruptLine: Send + Sync {
    /// Raises an edge on the line.
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt line that goes nowhere, for tests and devices without interrupts.
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl InterruptLine for NoInterrupt {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// An interrupt line that counts its edges, for tests.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    /// Number of edges raised.
    pub count: std::sync::atomic::AtomicU64,
}

impl InterruptLine for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
