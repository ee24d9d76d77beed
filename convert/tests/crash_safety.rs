//! Killed, interrupted and out-of-space runs: the destination holds nothing or a complete,
//! verifiable output, and no temporary file stays behind (Linux).
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use formats::checkpoint::Checkpoint;

/// A synthetic BNN checkpoint of about `mib` MiB (two dense layers).
fn big_checkpoint(dir: &Path, mib: u64) -> PathBuf {
    let prefix = dir.join("model.ckpt-5");
    // Two layers of n x 1024 weights, mu and rho in float32: 2 * 2 * n * 1024 * 4 bytes.
    let n = mib * 1024 * 1024 / (2 * 2 * 1024 * 4);
    formats::synthetic::write_synthetic_bnn(&prefix, &[(n, 1024), (1024, n)], 11).expect("synthetic checkpoint");
    prefix
}

fn spawn(args: &[&dyn AsRef<std::ffi::OsStr>], no_tmpfile: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnn-convert"));
    for a in args {
        cmd.arg(a);
    }
    if no_tmpfile {
        cmd.env(formats::output_file::ENV_NO_TMPFILE, "1");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn")
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill");
}

/// Waits up to 20 s for `cond`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn verify_checkpoint(prefix: &Path) {
    let ckpt = Checkpoint::open(prefix).expect("complete checkpoint opens");
    formats::convert::verify_all(&ckpt).expect("every tensor's checksum verifies");
}

fn verify_safetensors(path: &Path, tensors: usize) {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("complete safetensors file");
    assert_eq!(st.len(), tensors);
}

/// What a killed run may leave: nothing, or a complete output. A data shard whose index is not
/// yet linked is the one intermediate state (the index goes last, so no reader sees it).
fn assert_nothing_or_complete(dest: &Path, prefix: &Path, safetensors: Option<usize>) {
    let files = listing(dest);
    if let Some(count) = safetensors {
        match files.as_slice() {
            [] => {}
            [one] if one == "x.safetensors" => verify_safetensors(&dest.join(one), count),
            other => panic!("unexpected files after kill: {other:?}"),
        }
        return;
    }
    let index = format!("{}.index", prefix.file_name().and_then(|n| n.to_str()).expect("name"));
    let data = format!("{}.data-00000-of-00001", prefix.file_name().and_then(|n| n.to_str()).expect("name"));
    for f in &files {
        assert!(!f.starts_with('.'), "hidden temporary file left: {files:?}");
    }
    if files.contains(&index) {
        verify_checkpoint(prefix);
    } else {
        assert!(files.is_empty() || files == vec![data], "unexpected files after kill: {files:?}");
    }
}

#[test]
fn sigkill_at_any_point_leaves_nothing_or_a_complete_output() {
    let src = tempfile::tempdir().expect("tempdir");
    let input = big_checkpoint(src.path(), 160);
    let tensors = Checkpoint::open(&input).expect("open").variables().iter().filter(|v| v.kind.is_model()).count();
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 15, 40, 80, 150, 250, 400, 700] {
        for to_safetensors in [true, false] {
            let dest = tempfile::tempdir().expect("dest");
            let prefix = dest.path().join("model.ckpt-5");
            let out = if to_safetensors { dest.path().join("x.safetensors") } else { prefix.clone() };
            let cmd: &str = if to_safetensors { "ckpt-to-safetensors" } else { "prune" };
            let mut child = if to_safetensors {
                spawn(&[&cmd, &input, &"-o", &out], false)
            } else {
                spawn(&[&cmd, &input, &"-o", &out, &"--threshold", &"1"], false)
            };
            std::thread::sleep(Duration::from_millis(delay_ms));
            signal(&child, libc::SIGKILL);
            let status = child.wait().expect("wait");
            assert_nothing_or_complete(dest.path(), &prefix, to_safetensors.then_some(tensors));
            outcomes.push((cmd, delay_ms, status.success(), listing(dest.path()).len()));
        }
    }
    // Some kills must have landed mid-write for the test to mean anything.
    assert!(outcomes.iter().any(|o| !o.2), "every run finished before its kill: {outcomes:?}");
}

#[test]
fn sigterm_leaves_no_temporary_file_with_or_without_o_tmpfile() {
    let src = tempfile::tempdir().expect("tempdir");
    let input = big_checkpoint(src.path(), 160);
    for no_tmpfile in [false, true] {
        let dest = tempfile::tempdir().expect("dest");
        let out = dest.path().join("x.safetensors");
        let child = spawn(&[&"ckpt-to-safetensors", &input, &"-o", &out], no_tmpfile);
        if no_tmpfile {
            // The named partial file exists: it is the one the handler must remove.
            wait_for("the partial file", || listing(dest.path()).iter().any(|n| n.contains(".partial-")));
        } else {
            std::thread::sleep(Duration::from_millis(60));
        }
        signal(&child, libc::SIGTERM);
        let out = child.wait_with_output().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        if !out.status.success() {
            assert!(out.status.code() == Some(128 + libc::SIGTERM) || out.status.signal() == Some(libc::SIGTERM), "{:?}", out.status);
            assert_eq!(listing(dest.path()), Vec::<String>::new(), "no_tmpfile={no_tmpfile}");
        }
    }
}

#[test]
fn a_killed_runs_partial_file_is_swept_by_the_next_run() {
    let fc = fixtures().join("tf1_bnn_fc");
    let dest = tempfile::tempdir().expect("dest");
    // What SIGKILL leaves on a file system without O_TMPFILE, from a process that is gone.
    let stale = dest.path().join(".x.safetensors.partial-999999999-0");
    std::fs::write(&stale, b"half a file").expect("stale");
    let run = Command::new(env!("CARGO_BIN_EXE_bnn-convert"))
        .args(["ckpt-to-safetensors".as_ref(), fc.as_os_str(), "-o".as_ref(), dest.path().join("y.safetensors").as_os_str()])
        .env(formats::output_file::ENV_NO_TMPFILE, "1")
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(listing(dest.path()), vec!["y.safetensors"]);
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_names_the_output_and_leaves_nothing() {
    let Some(disk) = Tmpfs::mount("16k") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let fc = fixtures().join("tf1_bnn_fc");
    let out = disk.0.path().join("sub/x.safetensors");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &fc, &"-o", &out]);
    assert_one_line_error(&run, &[&out.display().to_string(), "No space left on device"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!err.contains("tf1_bnn_fc"), "the input is not to blame: {err}");
    assert_eq!(listing(disk.0.path()), Vec::<String>::new(), "no file, no folder");
    let prefix = disk.0.path().join("ck/model.ckpt-3000");
    let run = bnn_convert(&[&"prune", &fc, &"-o", &prefix, &"--threshold", &"1"]);
    assert_one_line_error(&run, &["model.ckpt-3000", "No space left on device"]);
    assert_eq!(listing(disk.0.path()), Vec::<String>::new(), "no file, no folder");
}

#[test]
fn prune_batch_stops_cleanly_on_ctrl_c_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("runs");
    for i in 0..12 {
        let dir = root.join(format!("run{i:02}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        formats::synthetic::write_synthetic_bnn(&dir.join("model.ckpt-1"), &[(1024, 1024), (1024, 1024)], i).expect("synthetic");
    }
    let out = tmp.path().join("out");
    let child = spawn(&[&"prune-batch", &root, &"-o", &out, &"-j", &"1", &"--threshold", &"1", &"--quiet"], false);
    wait_for("the first pruned checkpoint", || out.join("runs/run00/model.ckpt-1.prune.json").is_file());
    signal(&child, libc::SIGINT);
    let first = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted") && err.contains("run the same command again"), "{err}");
    let summary = std::fs::read_to_string(out.join("summary.csv")).expect("summary written");
    let ok = summary.lines().filter(|l| l.contains(",ok,")).count();
    let interrupted = summary.lines().filter(|l| l.contains(",interrupted,")).count();
    assert!(ok >= 1 && interrupted >= 1 && ok + interrupted == 12, "{summary}");
    let hidden: Vec<String> = listing(&out).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(hidden.is_empty(), "scratch left: {hidden:?}");

    let again = bnn_convert(&[&"prune-batch", &root, &"-o", &out, &"-j", &"1", &"--threshold", &"1", &"--quiet"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let summary = std::fs::read_to_string(out.join("summary.csv")).expect("summary");
    assert_eq!(summary.lines().filter(|l| l.contains(",skipped,")).count(), ok, "{summary}");
    assert_eq!(summary.lines().filter(|l| l.contains(",ok,")).count(), interrupted, "{summary}");
    for i in 0..12 {
        verify_checkpoint(&out.join(format!("runs/run{i:02}/model.ckpt-1")));
    }
}
