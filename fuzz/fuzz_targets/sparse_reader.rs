//! Fuzzes the sparse safetensors reader (docs/sparse-format.md): the safetensors header, the
//! `bnn_sparse` metadata and every CSR part. Any input must give Ok or Err, never a panic, a
//! hang or an allocation past the cap it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Dense bytes one entry may expand to here: small, so that libFuzzer's malloc limit would
/// catch a reader that allocated before checking.
const CAP: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = formats::safetensors_file::SafetensorsFile::parse("fuzz.safetensors", data.to_vec()) {
        let _ = formats::sparse::read_sparse(&file, CAP);
    }
});
