//! Pruned checkpoints as inputs (issue 13, item 2): a checkpoint pruned in zero mode and one
//! pruned in BPrune mode, fed back to `snr` and `prune`, report the same pruned counts, never
//! NaN; the counts are checked against numpy, on the fixture's values and on the pruned files.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn run_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (String, String) {
    let out = bnn_convert(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    serde_json::from_str(&run_ok(args).0).expect("json")
}

fn python() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// numpy on a safetensors file: per kernel, the weights with mu == 0 and (rho == 0 or
/// float32 softplus(rho) == 0), and (before pruning) those with float32 SNR <= T.
const NUMPY_COUNTS: &str = r#"
import json, struct, sys
import numpy as np
path, t = sys.argv[1], float(sys.argv[2])
raw = open(path, 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
head = json.loads(raw[8:8 + n])
def tensor(name):
    a, b = head[name]['data_offsets']
    return np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32)
out = {}
for name in sorted(head):
    if not name.endswith('.kernel_posterior_loc'):
        continue
    layer = name.split('.')[0]
    mu, rho = tensor(name), tensor(layer + '.kernel_posterior_untransformed_scale')
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        sigma = np.logaddexp(np.float32(0), rho)
        snr = np.abs(mu) / sigma
    pruned = (mu == 0) & ((rho == 0) | (sigma == 0))
    out[layer] = {'pruned': int(pruned.sum()), 'le': int((snr[~pruned] <= t).sum()), 'total': int(mu.size)}
print(json.dumps(out))
"#;

fn numpy_counts(safetensors: &Path, t: f64) -> Value {
    let out = Command::new(python()).arg("-c").arg(NUMPY_COUNTS).arg(safetensors).arg(t.to_string()).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("numpy json")
}

#[test]
fn zero_and_bprune_pruned_checkpoints_report_the_same_pruned_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dense = dir.path().join("dense.safetensors");
    run_ok(&[&"ckpt-to-safetensors", &fixtures().join("tf1_bnn_fc"), &"-o", &dense]);
    // numpy on the fixture's values: how many weights SNR <= 1 and <= 2 prune.
    let (at1, at2) = (numpy_counts(&dense, 1.0), numpy_counts(&dense, 2.0));
    let layers = ["den_1", "den_2", "den_3"];
    for mode in ["zero", "bprune"] {
        // Pruned as a TF checkpoint and as safetensors (for numpy to read).
        let tf = dir.path().join(mode).join("model.ckpt-3000");
        let st = dir.path().join(format!("{mode}.safetensors"));
        run_ok(&[&"prune", &fixtures().join("tf1_bnn_fc"), &"-o", &tf, &"--threshold", &"1", &"--mode", &mode]);
        run_ok(&[&"prune", &fixtures().join("tf1_bnn_fc"), &"-o", &st, &"--threshold", &"1", &"--mode", &mode]);
        let on_file = numpy_counts(&st, 1.0);
        for input in [tf.as_path(), st.as_path()] {
            // snr: pruned weights in their own column, statistics over the rest, no NaN.
            let report = json(&[&"snr", &"--json", &input]);
            let mut all_pruned = 0;
            for l in report["layers"].as_array().expect("layers") {
                let name = l["target"]["layer"].as_str().expect("layer");
                let s = &l["stats"];
                let want = at1[name]["le"].as_u64().expect("numpy count");
                assert_eq!(s["pruned"].as_u64(), Some(want), "{mode} {name}: pruned = numpy's SNR <= 1 count");
                assert_eq!(on_file[name]["pruned"].as_u64(), Some(want), "{mode} {name}: numpy on the pruned file");
                assert_eq!(s["count"].as_u64(), Some(at1[name]["total"].as_u64().expect("total") - want));
                let frac = s["pruned_fraction"].as_f64().expect("fraction");
                assert!((frac - want as f64 / at1[name]["total"].as_f64().expect("t")).abs() < 1e-12);
                for k in ["min", "max", "mean"] {
                    assert!(s[k].as_f64().is_some_and(f64::is_finite), "{mode} {name} {k}: {}", s[k]);
                }
                assert!(s["quantiles"].as_array().expect("q").iter().all(|q| q[1].as_f64().is_some_and(f64::is_finite)));
                // Every weight left has SNR > 1.
                assert_eq!(s["under"][1]["count"].as_u64(), Some(0), "{mode} {name}");
                all_pruned += want;
            }
            assert_eq!(report["overall"]["pruned"].as_u64(), Some(all_pruned));
            let (text, _) = run_ok(&[&"snr", &input]);
            assert!(!text.contains("NaN") && !text.contains("nan"), "{text}");
            let overall = text.lines().find(|l| l.starts_with("overall")).expect("overall row");
            assert_eq!(overall.split_whitespace().nth(2), Some(all_pruned.to_string().as_str()), "{text}");

            // prune again: already-pruned weights count as pruned, cumulatively.
            for (t, counts) in [("1", &at1), ("2", &at2)] {
                for again in ["zero", "bprune"] {
                    let out = dir.path().join(format!("again-{mode}-{again}-{t}.safetensors"));
                    let r = json(&[&"prune", &input, &"-o", &out, &"--threshold", &t, &"--mode", &again, &"--json"]);
                    for l in r["layers"].as_array().expect("layers") {
                        let name = l["layer"].as_str().expect("layer");
                        let (before, le) = (at1[name]["le"].as_u64(), counts[name]["le"].as_u64());
                        assert_eq!(l["already_pruned"].as_u64(), before, "{mode} -> {again} @ {t}: {name}");
                        assert_eq!(l["pruned"].as_u64(), le, "{mode} -> {again} @ {t}: {name} cumulative");
                        assert_eq!(l["newly_pruned"].as_u64(), Some(le.unwrap_or(0) - before.unwrap_or(0)));
                        assert_eq!(l["kept"].as_u64().map(|k| k + le.unwrap_or(0)), l["total"].as_u64());
                    }
                    assert_eq!(r["already_pruned"].as_u64(), Some(all_pruned));
                    // The output is pruned in the mode asked for, whatever the input's mode was.
                    let file = numpy_counts(&out, 1.0);
                    for name in layers {
                        assert_eq!(file[name]["pruned"].as_u64(), counts[name]["le"].as_u64(), "{again} output {name}");
                    }
                }
            }
        }
    }
}

#[test]
fn nan_and_infinite_values_are_named_not_hidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.safetensors");
    run_ok(&[&"ckpt-to-safetensors", &fixtures().join("tf1_bnn_fc"), &"-o", &file]);
    // Three NaN means and one infinite scale in den_2, written by numpy.
    let patch = r#"
import json, struct, sys
import numpy as np
path = sys.argv[1]
raw = bytearray(open(path, 'rb').read())
n = struct.unpack('<Q', raw[:8])[0]
head = json.loads(raw[8:8 + n])
def put(name, index, value):
    a = head[name]['data_offsets'][0]
    raw[8 + n + a + 4 * index:8 + n + a + 4 * index + 4] = np.float32(value).tobytes()
for i in (3, 10, 77):
    put('den_2.kernel_posterior_loc', i, np.nan)
put('den_2.kernel_posterior_untransformed_scale', 5, np.inf)
open(path, 'wb').write(bytes(raw))
"#;
    let out = Command::new(python()).arg("-c").arg(patch).arg(&file).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (text, err) = run_ok(&[&"snr", &file]);
    assert!(!text.contains("NaN"), "{text}");
    assert!(err.contains("'den_2.kernel_posterior_loc' holds 3 NaN or infinite values"), "{err}");
    assert!(err.contains("'den_2.kernel_posterior_untransformed_scale' holds 1 NaN or infinite values"), "{err}");
    let report = json(&[&"snr", &"--json", &file]);
    let den_2 = &report["layers"][1]["stats"];
    assert_eq!((den_2["undefined"].as_u64(), den_2["count"].as_u64()), (Some(4), Some(4096 - 4)));
    assert!(den_2["mean"].as_f64().is_some_and(f64::is_finite));
    assert_eq!(report["non_finite"].as_array().map(Vec::len), Some(2));

    let pruned = dir.path().join("p.safetensors");
    let out = bnn_convert(&[&"prune", &file, &"-o", &pruned, &"--sparsity", &"1"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'den_2.kernel_posterior_loc' holds 3 NaN or infinite values; those weights were not pruned"), "{err}");
    let r: Value = serde_json::from_str(&run_ok(&[&"prune", &file, &"-o", &pruned, &"--sparsity", &"1", &"--json"]).0).expect("json");
    assert_eq!(r["layers"][1]["kept"].as_u64(), Some(4), "the undefined weights stay");
}
