//! Property tests of the `.index` parser: whatever bytes it is given, it returns a value or an
//! error, never panics, and every valid table it accepts round-trips exactly.

use std::path::Path;

use formats::bundle::{BundleReader, BundleWriter};
use formats::table::{Table, TableBuilder};
use formats::DType;
use proptest::prelude::*;

/// The index and data shard of a small bundle with float, integer and string tensors.
fn valid_bundle() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("m");
    let mut w = BundleWriter::create(&prefix).expect("create");
    w.add_bytes("den_1/kernel_posterior_loc", DType::Float32, &[2, 2], &[0u8; 16]).expect("add");
    w.add_bytes("global_step", DType::Int64, &[], &7i64.to_le_bytes()).expect("add");
    w.add_strings("names", &[2], &[b"a".to_vec(), vec![b'z'; 200]]).expect("add");
    w.finish().expect("finish");
    let index = std::fs::read(dir.path().join("m.index")).expect("read index");
    let data = std::fs::read(dir.path().join("m.data-00000-of-00001")).expect("read data");
    (index, data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Table::parse(Path::new("fuzz.index"), &bytes);
    }

    #[test]
    fn mutated_indexes_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                   cut in any::<prop::sample::Index>()) {
        let (mut bytes, data) = valid_bundle();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = Table::parse(Path::new("fuzz.index"), &bytes);
        let keep = cut.index(bytes.len() + 1);
        let _ = Table::parse(Path::new("fuzz.index"), &bytes[..keep]);
        // Through the bundle reader too, which decodes the protos inside.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("m.index"), &bytes).expect("write");
        std::fs::write(dir.path().join("m.data-00000-of-00001"), &data).expect("write");
        if let Ok(r) = BundleReader::open(dir.path().join("m")) {
            for name in r.entries().keys() {
                let _ = r.read(name);
            }
        }
    }

    #[test]
    fn tables_round_trip(mut keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..24), 0..64),
                         block_size in 16usize..4096) {
        let mut b = TableBuilder::new(block_size);
        let keys: Vec<Vec<u8>> = std::mem::take(&mut keys).into_iter().collect();
        for (i, k) in keys.iter().enumerate() {
            prop_assert!(b.add(k, &i.to_le_bytes()));
        }
        let bytes = b.finish();
        let t = Table::parse(Path::new("rt.index"), &bytes).expect("own output parses");
        prop_assert_eq!(t.entries().len(), keys.len());
        for (i, ((k, v), want)) in t.entries().iter().zip(&keys).enumerate() {
            prop_assert_eq!(k, want);
            prop_assert_eq!(v.as_slice(), &i.to_le_bytes()[..]);
        }
    }
}
