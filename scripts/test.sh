#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine, installing what is missing:
# Python TensorFlow in .venv (for the tests that check TensorFlow reads what we write),
# then the Rust workspace tests, then the trainer's tests (TensorFlow C library + MPI).
# Ends with one line totalling every test run: "N passed, N failed".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "test: needs Rust's cargo (https://rustup.rs)" >&2; exit 1; }

scripts/setup-python.sh
export BNN_REQUIRE_PYTHON=1   # interoperability tests must run, not skip
# A one-shot build: incremental caches would only take disk (CI's filled once).
export CARGO_INCREMENTAL=0

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The default members: every crate but `train`, which needs TensorFlow and MPI.
cargo test 2>&1 | tee -a "$log" || status=1
if [ -x scripts/test-train.sh ]; then
  scripts/test-train.sh 2>&1 | tee -a "$log" || status=1
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
