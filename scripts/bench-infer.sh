#!/usr/bin/env bash
# Issue 5 benchmarks: native Monte Carlo inference against TensorFlow restoring the same
# checkpoint, and a 70%-pruned model against the dense one, all measured in this one run.
# Writes the section "## Inference and ONNX (issue 5)" of docs/performance.md (between the
# <!-- bench:infer --> markers; other sections are left alone).
#
#   scripts/bench-infer.sh            # needs .venv with TensorFlow for the TF comparison
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p bnn-convert
exec python3 bench/infer_bench.py
