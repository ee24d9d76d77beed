#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine, installing what is missing:
# Python TensorFlow in .venv (for the tests that check TensorFlow reads what we write),
# then the Rust workspace tests, then the trainer's tests (TensorFlow C library + MPI).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "test: needs Rust's cargo (https://rustup.rs)" >&2; exit 1; }

scripts/setup-python.sh
export BNN_REQUIRE_PYTHON=1   # interoperability tests must run, not skip

# The default members: every crate but `train`, which needs TensorFlow and MPI.
cargo test
if [ -x scripts/test-train.sh ]; then
  scripts/test-train.sh
fi
