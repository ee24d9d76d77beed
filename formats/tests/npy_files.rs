//! `.npy` / `.npz` files written by NumPy (fixtures/generate_npy.py) read back as NumPy
//! reads them (fixtures/data/npy/expected.json): every dtype, both byte orders, Fortran order,
//! scalars, empty arrays, stored and deflated archives.

use std::path::PathBuf;

use formats::dataset::{read_npy, Array, ArrayData, Npz};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/data/npy")
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_object().unwrap().clone()
}

/// Checks `a` against NumPy's reading `want` (`dtype`, `shape`, C-order `values`).
fn check(name: &str, a: &Array, want: &Value) {
    assert_eq!(a.dtype, want["dtype"].as_str().unwrap(), "{name}");
    let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    assert_eq!(a.shape, shape, "{name}");
    let vals = want["values"].as_array().unwrap();
    assert_eq!(a.data.len(), vals.len(), "{name}");
    match &a.data {
        ArrayData::F32(v) => {
            assert!(a.dtype.starts_with("float"), "{name}");
            for (i, (got, w)) in v.iter().zip(vals).enumerate() {
                // Bit for bit (the expected value is NumPy's float32 rounding), -0.0 included.
                assert_eq!(got.to_bits(), (w.as_f64().unwrap() as f32).to_bits(), "{name}[{i}]: {got} vs {w}");
            }
        }
        ArrayData::I64(v) => {
            let w: Vec<i64> = vals.iter().map(|x| x.as_i64().unwrap()).collect();
            assert_eq!(v, &w, "{name}");
        }
        ArrayData::U8(v) => {
            assert_eq!(a.dtype, "uint8", "{name}");
            let w: Vec<u8> = vals.iter().map(|x| x.as_u64().unwrap() as u8).collect();
            assert_eq!(v, &w, "{name}");
        }
    }
}

#[test]
fn every_dtype_byte_order_and_fortran_file_reads_as_numpy_does() {
    let exp = expected();
    let mut seen = 0;
    for (name, want) in &exp {
        if !name.ends_with(".npy") {
            continue;
        }
        let a = read_npy(&dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &a, want);
        seen += 1;
    }
    // 11 dtypes, 3 big-endian, 4 Fortran-order, a scalar and an empty array.
    assert_eq!(seen, 20);
}

#[test]
fn npz_archives_stored_and_deflated() {
    let exp = expected();
    for archive in ["xy.npz", "keras_style.npz"] {
        let mut npz = Npz::open(&dir().join(archive)).unwrap();
        let want = exp[archive].as_object().unwrap();
        let mut names = npz.names();
        names.sort();
        let mut want_names: Vec<String> = want.keys().cloned().collect();
        want_names.sort();
        assert_eq!(names, want_names, "{archive}");
        for (key, w) in want {
            assert!(npz.contains(key));
            let a = npz.array(key).unwrap();
            check(&format!("{archive}:{key}"), &a, w);
        }
    }
}

#[test]
fn bad_files_give_one_line_naming_file_and_problem() {
    let cases = [
        ("uint64_too_large.npy", "uint64 value 18446744073709551615 is outside the int64 range"),
        ("complex64.npy", "unsupported .npy dtype '<c8'"),
        ("bool.npy", "unsupported .npy dtype '|b1'"),
    ];
    for (name, msg) in cases {
        let p = dir().join(name);
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains(msg), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // An archive member that is missing lists what there is.
    let p = dir().join("keras_style.npz");
    let e = Npz::open(&p).unwrap().array("x").unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()) && e.contains("no array 'x'") && e.contains("x_test"), "{e}");
    // A .npy given as an archive.
    let p = dir().join("int32.npy");
    let e = Npz::open(&p).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()) && e.contains("not a .npz"), "{e}");
}
