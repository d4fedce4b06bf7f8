//! Runs one input through a target outside libFuzzer (no sanitizer, plain debug build, easy to
//! trace) and prints the device's counters:
//!
//! `cargo +nightly run --example run_input -- <target> <file>`

use fuzz_harness::targets;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(file)) = (args.next(), args.next()) else {
        return Err("usage: run_input <blk_request|vsock_packet|net_frame> <file>".into());
    };
    let data = std::fs::read(file)?;
    let counters = match target.as_str() {
        "blk_request" => targets::blk_request::run(&data),
        "vsock_packet" => targets::vsock_packet::run(&data),
        "net_frame" => targets::net_frame::run(&data),
        other => return Err(format!("unknown target {other}").into()),
    };
    println!("{counters}");
    Ok(())
}
