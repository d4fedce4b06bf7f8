//! Forwards GiB of frames between two ports of a network switch and prints the
//! throughput and the switch's CPU time, as one JSON line.
//!
//! `cargo run --profile benchmark -p rmachine-hostproxy --example switch_bench -- [GIB] [FRAME_LEN]`
//! (defaults: 1 GiB of 1514-byte frames).

#[cfg(unix)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let gib: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1.0);
    let frame_len: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1514);
    let bytes = (gib * f64::from(1u32 << 30)) as u64;
    let report = rmachine_hostproxy::switch::bench::forward(bytes, frame_len)?;
    let line = serde_json::json!({
        "bytes": report.bytes,
        "frame_len": report.frame_len,
        "wall_s": report.wall.as_secs_f64(),
        "gbit_per_s": report.gbit_per_s(),
        "switch_cpu_s": report.switch_cpu.map(|d| d.as_secs_f64()),
        "switch_cpu_s_per_gib": report.cpu_per_gib().map(|d| d.as_secs_f64()),
        "drops": report.stats.total.drops,
    });
    println!("{line}");
    Ok(())
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the network switch runs on unix hosts only");
}
