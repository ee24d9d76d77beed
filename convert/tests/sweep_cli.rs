//! `sweep` against the numpy SNR counts and TF accuracy stored with the fixture.

mod common;

use common::{assert_one_line_error, bnn_convert, fixtures};
use serde_json::Value;

fn load_json(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
}

#[test]
fn kept_fractions_match_numpy_counts_and_unpruned_row_matches_tensorflow() {
    let dir = tempfile::tempdir().expect("tmp");
    let (json, plot) = (dir.path().join("s.json"), dir.path().join("s.svg"));
    let ckpt = fixtures().join("tf1_bnn_fc");
    let data = fixtures().join("data/digits_test_x.npy");
    let out = bnn_convert(&[
        &"sweep", &ckpt, &"--data", &data, &"--thresholds", &"-1,0.5,1,2,10", &"--samples", &"4", &"--repeats", &"1",
        &"--json", &json, &"--plot", &plot,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 2 + 5, "{table}");
    let analysis = load_json(&ckpt.join("analysis.json"));
    let got = load_json(&json);
    let rows = got["rows"].as_array().expect("rows");
    assert_eq!(got["kernel_weights"], 8832);
    // Pruned counts per threshold: numpy's count of SNR <= T over all kernels.
    for (row, t) in rows[1..].iter().zip([0.5, 1.0, 2.0, 10.0]) {
        let expect = analysis["overall"]["count_le"].as_array().expect("count_le").iter().find(|c| c["threshold"] == t).expect("t")["count"]
            .as_f64()
            .unwrap_or(0.0);
        let pruned = row["pruned_fraction"].as_f64().unwrap_or(-1.0) * 8832.0;
        assert!((pruned - expect).abs() < 1e-6, "T = {t}: pruned {pruned}, numpy {expect}");
    }
    // Unpruned row: TF's mean-model accuracy; everything pruned (T = 10): only biases left.
    let count = |v: &Value| (v.as_f64().unwrap_or(-1.0) * 360.0).round() as i64;
    assert_eq!(count(&rows[0]["mean_accuracy"]), count(&analysis["mean_model"]["tf"]["accuracy"]));
    assert_eq!(rows[4]["kept_fraction"], 0.0);
    assert!(std::fs::read_to_string(&plot).expect("svg").starts_with("<svg"));
}

#[test]
fn sweep_rejects_bad_fractions_without_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("s.json");
    let data = fixtures().join("data/digits_test_x.npy");
    let out = bnn_convert(&[&"sweep", &fixtures().join("tf1_bnn_fc"), &"--data", &data, &"--fractions", &"0.5,1.5", &"--json", &json]);
    assert_one_line_error(&out, &["--fractions", "1.5"]);
    assert!(!json.exists());
}
