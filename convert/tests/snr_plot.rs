//! `snr --plot`: the SNR histograms drawn by plotters, as SVG and PNG, on the TF1 fixture.

mod common;

use common::*;
use serde_json::Value;

fn run_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = bnn_convert(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn histograms_are_drawn_as_svg_and_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixtures().join("tf1_bnn_fc");
    let report: Value = serde_json::from_str(&run_ok(&[&"snr", &src, &"--json"])).expect("json");
    let layers = report["layers"].as_array().expect("layers");
    let bars: usize = layers
        .iter()
        .map(|l| l["histogram"].as_array().expect("histogram").iter().filter(|b| b[1].as_u64() != Some(0)).count())
        .sum();
    assert!(bars > 3, "the fixture's SNRs spread over several bins");

    let svg_path = dir.path().join("snr.svg");
    run_ok(&[&"snr", &src, &"--plot", &svg_path]);
    let svg = std::fs::read_to_string(&svg_path).expect("svg").to_ascii_uppercase();
    assert!(svg.starts_with("<SVG"), "an SVG document");
    // One bar (in the bar colour, #4A7AB5) per non-empty histogram bin, no more.
    assert_eq!(svg.matches("FILL=\"#4A7AB5\"").count(), bars);

    let png_path = dir.path().join("snr.png");
    run_ok(&[&"snr", &src, &"--plot", &png_path]);
    let png = std::fs::read(&png_path).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, 760 x (40 + 220 per posterior).
    let (w, h) = (u32::from_be_bytes([png[16], png[17], png[18], png[19]]), u32::from_be_bytes([png[20], png[21], png[22], png[23]]));
    assert_eq!((w, h), (760, 40 + 220 * layers.len() as u32));
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");
}
