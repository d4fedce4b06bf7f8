//! See [`fuzz_harness::targets::blk_request`].

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_harness::targets::blk_request::run(data);
});
