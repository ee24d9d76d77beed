//! Adds the TensorFlow library folder found by pkg-config (scripts/setup-tensorflow.sh
//! writes it) to the binaries' run path, so `cargo run` / `cargo test` work without
//! LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if let Ok(out) = std::process::Command::new("pkg-config").args(["--variable=libdir", "tensorflow"]).output() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !dir.is_empty() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
