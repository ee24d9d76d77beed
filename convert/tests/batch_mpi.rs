//! `mpirun -np 2 bnn-convert prune-batch` (cargo feature `mpi`): the ranks split the jobs and
//! rank 0's summary lists every checkpoint once. Skipped with a note when mpirun is missing.
#![cfg(feature = "mpi")]

mod common;

use common::*;

#[test]
fn two_ranks_split_the_batch_and_rank_0_writes_the_summary() {
    if std::process::Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("note: mpirun not found; MPI batch test skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..5 {
        let run = dir.path().join(format!("in/run{i}"));
        std::fs::create_dir_all(&run).expect("mkdir");
        for e in std::fs::read_dir(fixtures().join("tf1_bnn_fc")).expect("fixture") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_file() {
                std::fs::copy(e.path(), run.join(e.file_name())).expect("copy");
            }
        }
    }
    let out = dir.path().join("out");
    let status = std::process::Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_bnn-convert"), "prune-batch", "--quiet", "--threshold", "1", "-o"])
        .arg(&out)
        .arg(dir.path().join("in"))
        .output()
        .expect("mpirun runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert_eq!(stdout.matches("checkpoints:").count(), 1, "only rank 0 reports: {stdout}");
    let csv = std::fs::read_to_string(out.join("summary.csv")).expect("summary");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "every checkpoint once, from both ranks: {csv}");
    assert!(rows.iter().all(|r| r.contains(",ok,")), "{csv}");
    for i in 0..5 {
        assert!(out.join(format!("in/run{i}/model.ckpt-3000.index")).is_file(), "run{i} pruned");
    }
}
