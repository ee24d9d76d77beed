//! No command writes over one of its inputs (paths resolved through `..`, symbolic and hard
//! links; companions included), failed runs leave no folders, closed pipes end quietly.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

/// (name, sha256) of every file under `dir`, recursively: to show inputs are untouched.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.is_file() {
                v.push((p.display().to_string(), hex::encode(Sha256::digest(std::fs::read(&p).expect("read")))));
            }
        }
    }
    v.sort();
    v
}

fn prefix_in(dir: &Path) -> PathBuf {
    formats::checkpoint_state::resolve_checkpoint(dir).expect("resolves")
}

/// A run refused with one line naming the output and the input it would overwrite.
fn assert_refused(args: &[&dyn AsRef<std::ffi::OsStr>], input_name: &str) {
    let run = bnn_convert(args);
    assert_one_line_error(&run, &["refusing to write over input file", input_name]);
}

#[test]
fn every_command_refuses_to_write_over_its_inputs() {
    let ckpt = copy_fixture("tf1_bnn_fc");
    let dir = ckpt.path();
    let prefix = prefix_in(dir);
    let safetensors = dir.join("a.safetensors");
    assert!(bnn_convert(&[&"ckpt-to-safetensors", &dir, &"-o", &safetensors]).status.success());
    let sparse = dir.join("sparse.safetensors");
    assert!(bnn_convert(&[&"prune", &dir, &"-o", &sparse, &"--threshold", &"1", &"--sparse"]).status.success());
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&safetensors, dir.join("link.safetensors")).expect("symlink");
    std::fs::hard_link(&safetensors, dir.join("hard.safetensors")).expect("hard link");
    let before = snapshot(dir);

    // The issue's case: pruning a checkpoint onto itself.
    assert_refused(&[&"prune", &prefix, &"-o", &prefix, &"--threshold", &"1"], "model.ckpt-3000.index");
    // Through `..` and through the folder.
    assert_refused(&[&"prune", &dir, &"-o", &dir.join("sub/../model.ckpt-3000"), &"--threshold", &"1"], "model.ckpt-3000");
    // Another prefix in the same folder would repoint its `checkpoint` state file.
    assert_refused(&[&"prune", &prefix, &"-o", &dir.join("pruned"), &"--threshold", &"1"], "checkpoint");
    // safetensors onto itself, directly, through a symbolic link, through a hard link.
    assert_refused(&[&"prune", &safetensors, &"-o", &safetensors, &"--threshold", &"1"], "a.safetensors");
    #[cfg(unix)]
    assert_refused(&[&"prune", &safetensors, &"-o", &dir.join("link.safetensors"), &"--threshold", &"1"], "a.safetensors");
    assert_refused(&[&"prune", &safetensors, &"-o", &dir.join("hard.safetensors"), &"--threshold", &"1"], "a.safetensors");
    // Outputs over companions: the data shard, the .meta graph, a manifest.
    assert_refused(&[&"ckpt-to-safetensors", &prefix, &"-o", &formats::bundle::data_shard_path(&prefix, 0, 1)], ".data-00000-of-00001");
    assert_refused(&[&"export-onnx", &prefix, &"-o", &dir.join("model.ckpt-3000.meta")], "model.ckpt-3000.meta");
    assert_refused(&[&"snr", &prefix, &"--plot", &dir.join("LayerNames.txt")], "LayerNames.txt");
    assert_refused(&[&"densify", &sparse, &"-o", &sparse], "sparse.safetensors");
    let data = fixtures().join("data/digits_test_x.npy");
    assert_refused(
        &[&"sweep", &prefix, &"--data", &data, &"--samples", &"1", &"--fractions", &"0.5", &"--json", &data],
        "digits_test_x.npy",
    );
    assert_eq!(snapshot(dir), before, "inputs unchanged");

    // Beside the input is fine when the files differ and the state file is not shared.
    let out = tempfile::tempdir().expect("out");
    let run = bnn_convert(&[&"safetensors-to-ckpt", &safetensors, &"-o", &out.path().join("model.ckpt-3000")]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let run = bnn_convert(&[&"prune", &safetensors, &"-o", &dir.join("b.safetensors"), &"--threshold", &"1"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn batch_refuses_output_over_its_input_trees_and_skips_an_output_inside_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("runs");
    let run_dir = root.join("a");
    std::fs::create_dir_all(&run_dir).expect("mkdir");
    for e in std::fs::read_dir(fixtures().join("tf1_bnn_fc")).expect("fixture") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), run_dir.join(e.file_name())).expect("copy");
    }
    let before = snapshot(&root);
    // Output root = input root, and an output root whose mirror of `runs` is `runs` itself.
    for out in [root.clone(), tmp.path().to_path_buf()] {
        let run = bnn_convert(&[&"prune-batch", &root, &"-o", &out, &"--threshold", &"1", &"--quiet"]);
        assert_one_line_error(&run, &["refusing to write the pruned tree over input folder", "runs"]);
    }
    assert_eq!(snapshot(&root), before);
    // An output folder inside the input tree is a subtree that discovery skips: a second run
    // does not prune the first run's outputs.
    let inside = root.join("pruned");
    for _ in 0..2 {
        let run = bnn_convert(&[&"prune-batch", &root, &"-o", &inside, &"--threshold", &"1", &"--quiet", &"--all-steps"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let summary = std::fs::read_to_string(inside.join("summary.csv")).expect("summary");
        assert_eq!(summary.lines().count(), 3, "two steps of one run, nothing from the output tree: {summary}");
    }
    assert!(inside.join("runs/a/model.ckpt-3000.index").is_file());
}

#[test]
fn failed_runs_leave_no_new_folders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fc = fixtures().join("tf1_bnn_fc");
    // Fails after the folder is made: a damaged posterior is found while the output streams.
    let damaged = copy_fixture("tf1_bnn_fc");
    let prefix = prefix_in(damaged.path());
    let reader = formats::bundle::BundleReader::open(&prefix).expect("open");
    let entry = reader.entry("den_1/kernel_posterior_loc").expect("entry").clone();
    let data = formats::bundle::data_shard_path(&prefix, 0, 1);
    let mut bytes = std::fs::read(&data).expect("read");
    bytes[entry.offset as usize + 8] ^= 0xff;
    std::fs::write(&data, bytes).expect("damage");
    for out in [tmp.path().join("new/deeper/model.ckpt-1"), tmp.path().join("new2/deeper/p.safetensors")] {
        let run = bnn_convert(&[&"prune", &prefix, &"-o", &out, &"--threshold", &"1"]);
        assert_one_line_error(&run, &["CRC32C"]);
    }
    // safetensors-to-ckpt of a file with a tensor name a checkpoint cannot hold.
    let bad_name = tmp.path().join("bad.safetensors");
    let header = br#"{"\u0000x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&1f32.to_le_bytes());
    std::fs::write(&bad_name, st).expect("write");
    let run = bnn_convert(&[&"safetensors-to-ckpt", &bad_name, &"-o", &tmp.path().join("new3/x/model.ckpt")]);
    assert_one_line_error(&run, &["cannot be a tensor name"]);
    // A failing batch (its one checkpoint is damaged) keeps its summary folder; a failed
    // ckpt-to-safetensors into a new folder does not.
    let run = bnn_convert(&[&"ckpt-to-safetensors", &tmp.path().join("missing"), &"-o", &tmp.path().join("new4/a.safetensors")]);
    assert!(!run.status.success());
    assert_eq!(listing(tmp.path()), vec!["bad.safetensors"], "no folder of a failed run remains");
    // Folders that existed before stay, and successful runs keep the folders they made.
    let run = bnn_convert(&[&"prune", &fc, &"-o", &tmp.path().join("ok/deeper/model.ckpt-1"), &"--threshold", &"1"]);
    assert!(run.status.success());
    assert!(tmp.path().join("ok/deeper/model.ckpt-1.index").is_file());
}

#[cfg(unix)]
#[test]
fn closed_pipes_end_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    // Many tensors: far more output than a pipe holds (64 KiB), so writes hit the closed pipe.
    let tmp = tempfile::tempdir().expect("tempdir");
    let prefix = tmp.path().join("model.ckpt-1");
    formats::synthetic::write_synthetic_bnn(&prefix, &vec![(2, 2); 3000], 7).expect("synthetic");
    for args in [vec!["inspect"], vec!["inspect", "--json"], vec!["snr"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bnn-convert"))
            .args(&args)
            .arg(&prefix)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // `| head -1`: read one line, then close the pipe.
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("one line");
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: nothing on stderr, got {err}");
        // Ended by SIGPIPE, as `ls | head` is (status 141 in a shell), not a panic (101).
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?}", out.status);
    }
}
