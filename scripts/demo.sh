#!/usr/bin/env bash
# The main job on a bundled example: a real TF1 BNN checkpoint written by TensorFlow Probability
# (fixtures/tf1_bnn_fc) is inspected, converted to safetensors and back, analysed, pruned,
# exported to ONNX and evaluated on the bundled digits, all without TensorFlow.
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

echo
echo "== snr, then prune every weight with SNR <= 1 (mu = 0, softplus(rho) = 0)"
"$bin" snr fixtures/tf1_bnn_fc --plot "$out/snr.svg"
"$bin" prune fixtures/tf1_bnn_fc -o "$out/pruned/model.ckpt-3000" --threshold 1
echo
echo "== export-onnx and eval of the pruned network"
"$bin" export-onnx "$out/pruned/model.ckpt-3000" -o "$out/bnn.onnx"
"$bin" eval "$out/pruned/model.ckpt-3000" --data fixtures/data/digits_test_x.npy --samples 100
