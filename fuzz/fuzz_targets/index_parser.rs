//! Fuzzes the checkpoint `.index` parser: table footer, blocks, restarts, trailers, then the
//! bundle header and entry protos. Any input must give Ok or Err, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.index");
    if let Ok(table) = formats::table::Table::parse(path, data) {
        for (key, value) in table.entries() {
            let _ = formats::bundle::Entry::decode(path, &String::from_utf8_lossy(key), value);
        }
    }
});
