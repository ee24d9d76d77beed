//! `prune-batch` over a tree with nested folders, a `.tar.zst`, a corrupt checkpoint and
//! archives with a `..` entry and an absolute path: good ones pruned, bad ones reported, nothing
//! written outside the output folder, inputs untouched, and a rerun resumes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn copy_into(fixture: &str, dest: &Path) {
    std::fs::create_dir_all(dest).expect("mkdir");
    for e in std::fs::read_dir(fixtures().join(fixture)).expect("fixture") {
        let e = e.expect("entry");
        if e.path().is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name())).expect("copy");
        }
    }
}

/// A tar entry with a raw name, bypassing the tar crate's own path checks.
fn raw_entry(builder: &mut tar::Builder<std::fs::File>, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    builder.append(&h, data).expect("append");
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn build_tree(root: &Path) {
    copy_into("tf1_bnn_fc", &root.join("a/run1"));
    copy_into("tf2_keras_adam", &root.join("b/nested/deeper"));
    let corrupt = root.join("c/corrupt");
    copy_into("tf1_bnn_fc", &corrupt);
    let data = corrupt.join("model.ckpt-3000.data-00000-of-00001");
    let mut bytes = std::fs::read(&data).expect("data");
    bytes[1000] ^= 0xff;
    std::fs::write(&data, bytes).expect("corrupt");

    let archives = root.join("archives");
    std::fs::create_dir_all(&archives).expect("mkdir");
    let file = std::fs::File::create(archives.join("good.tar.zst")).expect("create");
    let enc = zstd::stream::write::Encoder::new(file, 3).expect("zstd");
    let mut tar = tar::Builder::new(enc);
    tar.append_dir_all("run", fixtures().join("tf1_bnn_fc")).expect("tar");
    tar.into_inner().expect("tar").finish().expect("zstd");

    for (name, entry) in [("evil.tar", &b"../checkpoint"[..]), ("absolute.tar", &b"/tmp/bnn-evil/checkpoint"[..])] {
        let mut b = tar::Builder::new(std::fs::File::create(archives.join(name)).expect("create"));
        raw_entry(&mut b, entry, b"model_checkpoint_path: \"x\"\n");
        b.finish().expect("finish");
    }
}

fn summary(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str::<Value>(&text).expect("json").as_array().expect("array").clone()
}

fn status_of<'a>(records: &'a [Value], needle: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["path"].as_str().expect("path").contains(needle)).collect()
}

#[test]
fn batch_over_a_tree_with_archives_and_bad_inputs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("archive-root");
    build_tree(&root);
    let before = snapshot(&root);
    let out = tmp.path().join("out");

    let run = bnn_convert(&[&"prune-batch", &root, &"-o", &out, &"-j", &"2", &"--threshold", &"1", &"--quiet"]);
    // Some checkpoints failed: exit status 3 (README), with one line naming the summary.
    assert_eq!(run.status.code(), Some(3), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("summary.csv") && stderr.contains("3 of 6 checkpoint(s) failed"), "{stderr}");
    let records = summary(&out);
    assert_eq!(status_of(&records, "a/run1")[0]["status"], "ok");
    assert_eq!(status_of(&records, "b/nested/deeper")[0]["status"], "ok");
    let corrupt = status_of(&records, "c/corrupt")[0];
    assert_eq!(corrupt["status"], "failed");
    assert!(corrupt["error"].as_str().expect("error").contains("CRC32C mismatch"), "{corrupt}");
    let good = status_of(&records, "good.tar.zst!run/model.ckpt-3000");
    assert_eq!(good.len(), 1, "{records:?}");
    assert_eq!(good[0]["status"], "ok");
    for bad in ["evil.tar", "absolute.tar"] {
        let r = status_of(&records, bad)[0];
        assert_eq!(r["status"], "failed");
        assert!(r["error"].as_str().expect("error").contains("refused archive entry"), "{r}");
    }
    assert!(!tmp.path().join("checkpoint").exists() && !Path::new("/tmp/bnn-evil").exists(), "nothing escapes");
    assert!(out.join("summary.csv").is_file());

    // Outputs mirror the tree and match a single `prune` of the same checkpoint.
    let mirrored = out.join("archive-root/a/run1/model.ckpt-3000");
    let single = tmp.path().join("single/model.ckpt-3000");
    let one = bnn_convert(&[&"prune", &fixtures().join("tf1_bnn_fc"), &"-o", &single, &"--threshold", &"1"]);
    assert!(one.status.success());
    for p in [mirrored.clone(), out.join("archive-root/archives/good/run/model.ckpt-3000")] {
        let a = formats::checkpoint::Checkpoint::open(&p).expect("batch output opens");
        let b = formats::checkpoint::Checkpoint::open(&single).expect("single output opens");
        let key = "den_1/kernel_posterior_loc";
        assert_eq!(a.read(key).expect("a").bytes(), b.read(key).expect("b").bytes(), "{}", p.display());
    }
    assert_eq!(good[0]["sparsity"], corrupt_free_sparsity(&records));

    // Inputs untouched; no scratch folders left in the output.
    assert_eq!(snapshot(&root), before);
    assert!(std::fs::read_dir(&out).expect("ls").all(|e| !e.expect("e").file_name().to_string_lossy().starts_with(".bnn-work")));

    // A rerun skips what is done and retries the failures.
    let run = bnn_convert(&[&"prune-batch", &root, &"-o", &out, &"-j", &"1", &"--threshold", &"1", &"--quiet"]);
    assert_eq!(run.status.code(), Some(3), "the corrupt checkpoint still fails");
    let again = summary(&out);
    assert_eq!(status_of(&again, "a/run1")[0]["status"], "skipped");
    assert_eq!(status_of(&again, "good.tar.zst")[0]["status"], "skipped");
    assert_eq!(status_of(&again, "c/corrupt")[0]["status"], "failed");
}

fn corrupt_free_sparsity(records: &[Value]) -> Value {
    status_of(records, "a/run1")[0]["sparsity"].clone()
}

#[test]
fn all_steps_and_zstd_outputs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("r");
    copy_into("tf1_bnn_fc", &root.join("run"));
    let out = tmp.path().join("o");
    let run = bnn_convert(&[&"prune-batch", &root, &"-o", &out, &"--all-steps", &"--compress", &"zstd", &"--sparsity", &"0.5", &"--quiet"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let records = summary(&out);
    assert_eq!(records.len(), 2, "both steps: {records:?}");
    for step in ["model.ckpt-0", "model.ckpt-3000"] {
        let packed = out.join(format!("r/run/{step}.tar.zst"));
        assert!(packed.is_file(), "{}", packed.display());
        let mut names: Vec<String> = tar::Archive::new(zstd::stream::read::Decoder::new(std::fs::File::open(&packed).expect("open")).expect("zstd"))
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").display().to_string())
            .collect();
        names.sort();
        assert!(names.iter().any(|n| n.ends_with(&format!("{step}.index"))), "{names:?}");
    }
}
