#!/usr/bin/env bash
# Everything the trainer's tests need, on a fresh Debian machine (CI runs this):
# Open MPI + libclang (scripts/setup-mpi.sh), the TensorFlow C library from the
# tensorflow-cpu wheel (scripts/setup-tensorflow.sh), bnn-convert for the checkpoint
# round trip, then `cargo test -p bnn-train` (unit tests, CLI tests, TensorFlow-Python
# interop, and the `mpirun -np 2` tests) and bnn-convert's MPI batch test (`prune-batch`
# split across ranks, cargo feature `mpi`). Optional dependencies are required here:
# a missing one fails instead of skipping. Exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)

scripts/setup-mpi.sh
eval "$(scripts/setup-tensorflow.sh)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/train}"
export TF_CPP_MIN_LOG_LEVEL=2
export BNN_TRAIN_REQUIRE_MPI=1 BNN_TRAIN_REQUIRE_PYTHON=1 BNN_TRAIN_REQUIRE_CONVERT=1
# Open MPI refuses root without these; CI containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cargo build -p bnn-convert
cargo test -p bnn-train --no-fail-fast
# prune-batch split across MPI ranks (bnn-convert's optional `mpi` feature).
cargo test -p bnn-convert --features mpi --test batch_mpi

# The same binary, as a user runs it on two ranks.
bin="$CARGO_TARGET_DIR/debug/bnn-train"
mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" train --data-dir fixtures/data --epochs 1 --quiet --report - \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); d=r["variable_digests"]; assert r["ranks"]==2 and d[0]==d[1], r; print("mpirun -np 2: ranks identical, %d allreduce call(s)/step" % r["allreduce"]["calls_per_step"])'

echo "test-train: all passed in $(( $(date +%s) - start )) s"
