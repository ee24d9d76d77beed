#!/usr/bin/env bash
# The main job on a bundled example: a real TF1 BNN checkpoint written by TensorFlow Probability
# (fixtures/tf1_bnn_fc) is inspected, converted to safetensors and back, without TensorFlow.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "demo: needs Rust's cargo (https://rustup.rs)" >&2; exit 1; }
cargo build --release -q -p bnn-convert
bin="$root/target/release/bnn-convert"
out="$root/target/demo"
rm -rf "$out" && mkdir -p "$out"

echo "== inspect fixtures/tf1_bnn_fc (latest checkpoint via its 'checkpoint' state file)"
"$bin" inspect --verify fixtures/tf1_bnn_fc
echo
echo "== ckpt-to-safetensors"
"$bin" ckpt-to-safetensors fixtures/tf1_bnn_fc -o "$out/bnn.safetensors"
"$bin" inspect "$out/bnn.safetensors"
echo
echo "== safetensors-to-ckpt (original TensorFlow names restored)"
"$bin" safetensors-to-ckpt "$out/bnn.safetensors" -o "$out/ckpt/model.ckpt-roundtrip"
"$bin" inspect --verify "$out/ckpt"
