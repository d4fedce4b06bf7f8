//! The flattened device tree an aarch64 guest boots with: memory, the vCPUs (PSCI enable
//! method), PSCI 0.2 through `hvc`, the GICv3, the arch timer, the PL011 console and its clock,
//! one node per virtio-mmio transport, and `/chosen` (command line, console, initrd).
//!
//! Plain code over [`FdtConfig`], compiled and tested on every host; only the aarch64 build
//! boots with it. Bindings: Linux's Documentation/devicetree/bindings (`arm/cpus.yaml`,
//! `arm/psci.yaml`, `interrupt-controller/arm,gic-v3.yaml`, `timer/arm,arch_timer.yaml`,
//! `serial/pl011.yaml`, `virtio/mmio.yaml`, `chosen.yaml`).

use vm_fdt::FdtWriter;

mod defs {
    //! Cell values of the GIC bindings (include/dt-bindings/interrupt-controller/arm-gic.h,
    //! irq.h).

    /// First cell of an interrupt specifier: a shared peripheral interrupt.
    pub const GIC_SPI: u32 = 0;
    /// First cell: a private peripheral interrupt.
    pub const GIC_PPI: u32 = 1;
    /// Third cell: rising edge.
    pub const IRQ_TYPE_EDGE_RISING: u32 = 1;
    /// Third cell: active-high level.
    pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
    /// The arch timer's PPIs: secure physical, non-secure physical, virtual, hypervisor.
    pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
    /// The GIC maintenance interrupt's PPI.
    pub const GIC_MAINTENANCE_PPI: u32 = 9;
    /// phandle of the interrupt controller.
    pub const PHANDLE_GIC: u32 = 1;
    /// phandle of the UART's clock.
    pub const PHANDLE_CLOCK: u32 = 2;
    /// The PL011's reference clock (what QEMU `virt` gives it).
    pub const UART_CLOCK_HZ: u32 = 24_000_000;
}

use defs::*;

/// Errors of device tree generation.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// The writer refused a node or property (a NUL in the command line, for example).
    #[error("cannot write the device tree")]
    Write(#[source] vm_fdt::Error),
    /// The tree is larger than its room in guest memory.
    #[error("the device tree takes {size} bytes, more than its {max} bytes of room")]
    TooLarge {
        /// Bytes written.
        size: usize,
        /// Room.
        max: usize,
    },
    /// A configuration the tree cannot describe.
    #[error("invalid device tree input: {0}")]
    Invalid(String),
}

/// A device with one register window and one SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest physical address of its registers.
    pub addr: u64,
    /// Size of the register window.
    pub size: u64,
    /// SPI number (from 0; interrupt id 32 + spi).
    pub spi: u32,
}

/// What the tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig<'a> {
    /// The `reg` (MPIDR affinity) of each vCPU, in id order.
    pub cpu_mpidrs: Vec<u64>,
    /// RAM `(start, size)`.
    pub ram: (u64, u64),
    /// The kernel command line.
    pub cmdline: &'a str,
    /// An initrd `(start, size)`.
    pub initrd: Option<(u64, u64)>,
    /// GICv3 distributor `(addr, size)`.
    pub gic_dist: (u64, u64),
    /// GICv3 redistributors `(addr, size)` (all vCPUs).
    pub gic_redist: (u64, u64),
    /// The PL011 console.
    pub serial: MmioDevice,
    /// The virtio-mmio transports.
    pub virtio: Vec<MmioDevice>,
    /// Room for the tree.
    pub max_size: usize,
}

fn spi_edge(spi: u32) -> [u32; 3] {
    [GIC_SPI, spi, IRQ_TYPE_EDGE_RISING]
}

/// Builds the tree.
pub fn create(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    if cfg.cpu_mpidrs.is_empty() {
        return Err(FdtError::Invalid("no vcpus".into()));
    }
    if cfg.ram.1 == 0 {
        return Err(FdtError::Invalid("no ram".into()));
    }
    if let Some((start, size)) = cfg.initrd {
        let (ram_start, ram_size) = cfg.ram;
        let inside = start >= ram_start
            && start
                .checked_add(size)
                .is_some_and(|end| end <= ram_start + ram_size);
        if !inside {
            return Err(FdtError::Invalid(format!(
                "initrd {start:#x}+{size:#x} is outside ram"
            )));
        }
    }
    let blob = write(cfg).map_err(FdtError::Write)?;
    if blob.len() > cfg.max_size {
        return Err(FdtError::TooLarge {
            size: blob.len(),
            max: cfg.max_size,
        });
    }
    Ok(blob)
}

fn write(cfg: &FdtConfig) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "rmachine-vmm")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for mpidr in &cfg.cpu_mpidrs {
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", *mpidr)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let (ram_start, ram_size) = cfg.ram;
    let memory = fdt.begin_node(&format!("memory@{ram_start:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[ram_start, ram_size])?;
    fdt.end_node(memory)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cfg.cmdline)?;
    fdt.property_string("stdout-path", &format!("/pl011@{:x}", cfg.serial.addr))?;
    if let Some((start, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", start + size)?;
    }
    fdt.end_node(chosen)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string("compatible", "arm,psci-0.2")?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let gic = fdt.begin_node(&format!("intc@{:x}", cfg.gic_dist.0))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u64(
        "reg",
        &[
            cfg.gic_dist.0,
            cfg.gic_dist.1,
            cfg.gic_redist.0,
            cfg.gic_redist.1,
        ],
    )?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.property_u32("phandle", PHANDLE_GIC)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(timer)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_u32("phandle", PHANDLE_CLOCK)?;
    fdt.end_node(clock)?;

    let serial = fdt.begin_node(&format!("pl011@{:x}", cfg.serial.addr))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".to_string(), "arm,primecell".to_string()],
    )?;
    fdt.property_array_u64("reg", &[cfg.serial.addr, cfg.serial.size])?;
    fdt.property_array_u32("interrupts", &spi_edge(cfg.serial.spi))?;
    fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    fdt.property_string_list(
        "clock-names",
        vec!["uartclk".to_string(), "apb_pclk".to_string()],
    )?;
    fdt.end_node(serial)?;

    for dev in &cfg.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", dev.addr))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[dev.addr, dev.size])?;
        fdt.property_array_u32("interrupts", &spi_edge(dev.spi))?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }

    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cmdline: &str) -> FdtConfig<'_> {
        FdtConfig {
            cpu_mpidrs: vec![0, 1],
            ram: (0x8000_0000, 512 << 20),
            cmdline,
            initrd: Some((0x8400_0000, 0x1000)),
            gic_dist: (0x0800_0000, 0x1_0000),
            gic_redist: (0x080a_0000, 0x4_0000),
            serial: MmioDevice {
                addr: 0x0900_0000,
                size: 0x1000,
                spi: 1,
            },
            virtio: vec![
                MmioDevice {
                    addr: 0x0a00_0000,
                    size: 0x1000,
                    spi: 16,
                },
                MmioDevice {
                    addr: 0x0a00_1000,
                    size: 0x1000,
                    spi: 17,
                },
            ],
            max_size: 2 << 20,
        }
    }

    fn cells_u32(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn cells_u64(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn test_fdt_parses_back_with_every_node() {
        let blob = create(&config("console=ttyAMA0 quiet")).unwrap();
        let fdt = fdt::Fdt::new(&blob).expect("a valid device tree");
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("bootargs").unwrap().as_str(),
            Some("console=ttyAMA0 quiet")
        );
        assert_eq!(
            chosen.property("stdout-path").unwrap().as_str(),
            Some("/pl011@9000000")
        );
        assert_eq!(
            chosen.property("linux,initrd-start").unwrap().as_usize(),
            Some(0x8400_0000)
        );
        assert_eq!(
            chosen.property("linux,initrd-end").unwrap().as_usize(),
            Some(0x8400_1000)
        );
        let memory = fdt.find_node("/memory@80000000").unwrap();
        assert_eq!(
            cells_u64(memory.property("reg").unwrap().value),
            [0x8000_0000, 512 << 20]
        );
        let cpus: Vec<_> = fdt.find_all_nodes("/cpus/cpu").collect();
        assert_eq!(cpus.len(), 2);
        for (i, cpu) in fdt.cpus().enumerate() {
            assert_eq!(cpu.ids().first(), i);
            assert_eq!(
                cpu.property("enable-method").unwrap().as_str(),
                Some("psci")
            );
        }
        let psci = fdt.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        assert_eq!(
            psci.property("compatible").unwrap().as_str(),
            Some("arm,psci-0.2")
        );
        let gic = fdt.find_node("/intc@8000000").unwrap();
        assert_eq!(
            gic.property("compatible").unwrap().as_str(),
            Some("arm,gic-v3")
        );
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(
            cells_u64(gic.property("reg").unwrap().value),
            [0x0800_0000, 0x1_0000, 0x080a_0000, 0x4_0000]
        );
        let root = fdt.find_node("/").unwrap();
        assert_eq!(
            root.property("interrupt-parent").unwrap().as_usize(),
            gic.property("phandle").unwrap().as_usize()
        );
        let timer = fdt.find_node("/timer").unwrap();
        assert_eq!(
            cells_u32(timer.property("interrupts").unwrap().value),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        let uart = fdt.find_node("/pl011@9000000").unwrap();
        assert_eq!(
            uart.compatible().unwrap().all().collect::<Vec<_>>(),
            ["arm,pl011", "arm,primecell"]
        );
        assert_eq!(
            cells_u32(uart.property("interrupts").unwrap().value),
            [0, 1, 1]
        );
        assert_eq!(
            cells_u32(uart.property("clocks").unwrap().value),
            [PHANDLE_CLOCK, PHANDLE_CLOCK]
        );
        let virtio: Vec<_> = fdt
            .all_nodes()
            .filter(|n| n.name.starts_with("virtio_mmio@"))
            .collect();
        assert_eq!(virtio.len(), 2);
        assert_eq!(virtio[1].name, "virtio_mmio@a001000");
        assert_eq!(
            cells_u32(virtio[1].property("interrupts").unwrap().value),
            [0, 17, 1]
        );
        assert_eq!(
            cells_u64(virtio[1].property("reg").unwrap().value),
            [0x0a00_1000, 0x1000]
        );
    }

    #[test]
    fn test_fdt_without_initrd_or_devices() {
        let mut cfg = config("x");
        cfg.initrd = None;
        cfg.virtio.clear();
        cfg.cpu_mpidrs = vec![0];
        let blob = create(&cfg).unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        assert!(fdt
            .find_node("/chosen")
            .unwrap()
            .property("linux,initrd-start")
            .is_none());
        assert_eq!(fdt.cpus().count(), 1);
    }

    #[test]
    fn test_fdt_bad_inputs_are_errors() {
        // A NUL cannot be in a device tree string.
        let err = create(&config("a\0b")).unwrap_err();
        assert!(matches!(err, FdtError::Write(_)), "{err}");
        let mut cfg = config("x");
        cfg.cpu_mpidrs.clear();
        assert!(matches!(create(&cfg), Err(FdtError::Invalid(_))));
        let mut cfg = config("x");
        cfg.initrd = Some((0x8000_0000 + (511 << 20), 2 << 20));
        assert!(matches!(create(&cfg), Err(FdtError::Invalid(_))));
        let mut cfg = config("x");
        cfg.initrd = Some((u64::MAX - 1, 16));
        assert!(matches!(create(&cfg), Err(FdtError::Invalid(_))));
        let mut cfg = config("x");
        cfg.max_size = 64;
        assert!(matches!(create(&cfg), Err(FdtError::TooLarge { .. })));
    }
}
