//! Fuzzes `.npy` parsing through the public `formats::dataset::parse_npy`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = formats::dataset::parse_npy(data);
});
