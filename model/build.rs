//! Enables the engine's AVX-512 sparse kernels (`cfg(bnn_avx512)`) on compilers that have the
//! AVX-512 intrinsics (Rust 1.89); older compilers (the MSRV is 1.85) build the AVX2 and
//! portable kernels only.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(bnn_avx512)");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("--version").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).unwrap_or_default();
    // "rustc 1.95.0 (...)": the minor version.
    let minor = version.split_whitespace().nth(1).and_then(|v| v.split('.').nth(1)).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    if minor >= 89 && std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64") {
        println!("cargo:rustc-cfg=bnn_avx512");
    }
}
