#!/usr/bin/env bash
# Issue 10 benchmarks: native Monte Carlo inference against TensorFlow restoring the same
# checkpoint and onnxruntime on our MC export, on BNN-FC, BNN-Conv (28x28x1) and a VGG-16 BNN
# (32x32x3), dense and 70% pruned; GEMM peak and the CSR/GEMM crossover; `sweep` on VGG-16.
# Writes the section between the <!-- bench:infer --> markers of docs/performance.md.
#
#   scripts/bench-infer.sh                          # needs .venv (TensorFlow, TFP, onnxruntime)
#   BASELINE=/path/to/old/bnn-convert scripts/bench-infer.sh   # adds the "649c966" columns
#
# The baseline is this workspace built at commit 649c966 (before issue 10), e.g.
#   git worktree add /tmp/base 649c966 && cargo build --release -p bnn-convert --manifest-path /tmp/base/Cargo.toml
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p bnn-convert
cargo build --release -p bnn-model --example kernel_bench
exec python3 bench/infer_bench.py
