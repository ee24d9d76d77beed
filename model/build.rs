//! Sets `cfg(avx512_intrinsics)` when the compiler has stable AVX-512 target features and
//! intrinsics (Rust 1.89): the engine's AVX-512 kernels are compiled only then, so the crate
//! still builds on the workspace's minimum Rust version with the AVX2 and portable kernels.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(avx512_intrinsics)");
    println!("cargo::rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)": the minor version.
    let minor = version.split_whitespace().nth(1).and_then(|v| v.split('.').nth(1)).and_then(|m| m.parse::<u32>().ok());
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo::rustc-cfg=avx512_intrinsics");
    }
}
