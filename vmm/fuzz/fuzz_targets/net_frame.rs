//! See [`fuzz_harness::targets::net_frame`].

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_harness::targets::net_frame::run(data);
});
