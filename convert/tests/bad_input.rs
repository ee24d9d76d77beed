//! Damaged and hostile inputs: every one gives a single-line error naming the file, a non-zero
//! exit, no panic, and no output file.

mod common;

use std::path::Path;

use common::*;

/// Runs `ckpt-to-safetensors` on `prefix` and checks the failure and that nothing was written.
fn assert_conversion_fails(prefix: &Path, needles: &[&str]) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("out.safetensors");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &prefix, &"-o", &out]);
    assert_one_line_error(&run, needles);
    assert!(listing(out_dir.path()).is_empty(), "partial output left: {:?}", listing(out_dir.path()));
}

/// Runs `prune` on `prefix` to a TF checkpoint and to safetensors; checks both fail and that
/// nothing was written (the damage is found while the output streams).
fn assert_prune_fails(prefix: &Path, needles: &[&str]) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    for out in [out_dir.path().join("model.ckpt-1"), out_dir.path().join("p.safetensors")] {
        let run = bnn_convert(&[&"prune", &prefix, &"-o", &out, &"--threshold", &"1"]);
        assert_one_line_error(&run, needles);
        assert!(listing(out_dir.path()).is_empty(), "partial output left: {:?}", listing(out_dir.path()));
    }
}

fn prefix_of(dir: &Path) -> std::path::PathBuf {
    formats::checkpoint_state::resolve_checkpoint(dir).expect("fixture resolves")
}

fn index_of(prefix: &Path) -> std::path::PathBuf {
    formats::bundle::index_path(prefix)
}

fn data_of(prefix: &Path) -> std::path::PathBuf {
    formats::bundle::data_shard_path(prefix, 0, 1)
}

#[test]
fn zero_byte_truncated_and_garbage_indexes() {
    let dir = copy_fixture("tf1_bnn_fc");
    let prefix = prefix_of(dir.path());
    let index = index_of(&prefix);
    let good = std::fs::read(&index).expect("index");
    std::fs::write(&index, b"").expect("write");
    assert_conversion_fails(&prefix, &[".index", "empty"]);
    std::fs::write(&index, &good[..good.len() / 2]).expect("write");
    assert_conversion_fails(&prefix, &[".index"]);
    std::fs::write(&index, vec![0x5a; 4096]).expect("write");
    assert_conversion_fails(&prefix, &[".index", "magic"]);
    let mut bad_magic = good.clone();
    let n = bad_magic.len();
    bad_magic[n - 3] ^= 0x40;
    std::fs::write(&index, &bad_magic).expect("write");
    assert_conversion_fails(&prefix, &[".index", "magic"]);
}

#[test]
fn checksum_mismatches_in_index_and_data() {
    let dir = copy_fixture("tf1_bnn_fc");
    let prefix = prefix_of(dir.path());
    let index = index_of(&prefix);
    let good = std::fs::read(&index).expect("index");
    let mut bad = good.clone();
    bad[20] ^= 0x01; // inside the first data block
    std::fs::write(&index, &bad).expect("write");
    assert_conversion_fails(&prefix, &[".index", "CRC32C mismatch"]);
    std::fs::write(&index, &good).expect("restore");

    let data = data_of(&prefix);
    let mut bytes = std::fs::read(&data).expect("data");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&data, &bytes).expect("write");
    assert_conversion_fails(&prefix, &[".data-00000-of-00001", "CRC32C mismatch", "tensor '"]);
    assert_prune_fails(&prefix, &[".data-00000-of-00001", "CRC32C mismatch", "tensor '"]);
}

#[test]
fn missing_shard_and_offsets_past_the_end() {
    let dir = copy_fixture("tf1_bnn_fc");
    let prefix = prefix_of(dir.path());
    let data = data_of(&prefix);
    let bytes = std::fs::read(&data).expect("data");
    std::fs::write(&data, &bytes[..bytes.len() / 3]).expect("truncate");
    assert_conversion_fails(&prefix, &[".data-00000-of-00001", "past the end"]);
    std::fs::remove_file(&data).expect("rm");
    assert_conversion_fails(&prefix, &[".data-00000-of-00001", "missing data shard"]);
}

#[test]
fn absurd_declared_sizes_are_rejected() {
    // An index whose entry declares far more bytes than dtype x shape: built with our writer,
    // then the entry rewritten through the table builder.
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("m");
    let mut w = formats::bundle::BundleWriter::create(&prefix).expect("create");
    w.add_bytes("x", formats::DType::Float32, &[2], &[0u8; 8]).expect("add");
    w.finish().expect("finish");
    let table = formats::table::Table::parse(&index_of(&prefix), &std::fs::read(index_of(&prefix)).expect("read")).expect("parse");
    let mut b = formats::table::TableBuilder::default();
    for (k, v) in table.entries() {
        if k.is_empty() {
            b.add(k, v);
        } else {
            let mut e = formats::bundle::Entry::decode(Path::new("m"), "x", v).expect("entry");
            e.shape = vec![1 << 40, 1 << 40];
            e.size = 8;
            b.add(k, &e.encode());
        }
    }
    std::fs::write(index_of(&prefix), b.finish()).expect("write");
    assert_conversion_fails(&prefix, &["m.index", "'x'"]);
}

#[test]
fn not_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_conversion_fails(&dir.path().join("nothing-here"), &["nothing-here", "not a checkpoint"]);
    assert_conversion_fails(dir.path(), &["no 'checkpoint' state file"]);
    let st = dir.path().join("bad.safetensors");
    std::fs::write(&st, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").expect("write");
    let out = dir.path().join("o");
    let run = bnn_convert(&[&"safetensors-to-ckpt", &st, &"-o", &out]);
    assert_one_line_error(&run, &["bad.safetensors"]);
    assert_eq!(listing(dir.path()), vec!["bad.safetensors"]);
}

#[test]
fn inputs_are_never_modified() {
    let dir = copy_fixture("tf1_bnn_fc");
    let before: Vec<(String, Vec<u8>)> =
        listing(dir.path()).into_iter().map(|f| (f.clone(), std::fs::read(dir.path().join(&f)).expect("read"))).collect();
    let out = tempfile::tempdir().expect("tempdir");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &dir.path(), &"-o", &out.path().join("a.safetensors")]);
    assert!(run.status.success());
    let run = bnn_convert(&[&"inspect", &"--verify", &dir.path()]);
    assert!(run.status.success());
    for (f, bytes) in before {
        assert_eq!(std::fs::read(dir.path().join(&f)).expect("read"), bytes, "{f} changed");
    }
}
