#!/usr/bin/env python3
"""Driver of scripts/bench-infer.sh (issue 10; standard library only, TensorFlow and
onnxruntime run in .venv).  Measures, in one run on this machine, prediction time only,
warmed up and median of REPEATS runs each:

* our engine: `bnn-convert eval CK --data X --samples S --json --repeats REPEATS` (its
  `seconds`: prediction only, Flipout, median after a warm-up prediction), median of
  WARM_PROCESSES processes, with the peak resident memory of the process; and cold (one
  prediction per process, median of REPEATS processes);
* the engine of commit 649c966 (before issue 10), when BASELINE names its binary;
* TensorFlow restoring the same checkpoint from its `.meta` (bench/infer_tf.py: S `sess.run`s
  of the stored Flipout logits);
* onnxruntime on our `export-onnx --mode mc --samples S` graph (one `run` = all S samples);

on BNN-FC (fixture, digits 360 x 64), the paper's BNN-Conv on 28x28x1 and a VGG-16 BNN on
32x32x3 (both made by bench/make_models.py, untrained), each dense and 70% pruned
(`bnn-convert prune --sparsity 0.7`, lowest SNR first); plus the GEMM peak and the CSR/GEMM
crossover (`cargo run --release -p bnn-model --example kernel_bench`), and `sweep` on the
VGG-16 BNN with 6 fractions, ours against the baseline.  Writes the section between the
<!-- bench:infer --> markers of docs/performance.md.
"""
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = os.path.join(ROOT, "target", "release", "bnn-convert")
BASELINE = os.environ.get("BASELINE")
KB = os.path.join(ROOT, "target", "release", "examples", "kernel_bench")
PY = os.path.join(ROOT, ".venv", "bin", "python")
WORK = os.path.join(ROOT, "target", "bench-models")
REPEATS = int(os.environ.get("REPEATS", "5"))
# Processes of `eval --repeats REPEATS` per measurement of ours (each warmed up in-process).
WARM_PROCESSES = 3
DOC = os.path.join(ROOT, "docs", "performance.md")
SWEEP_FRACTIONS = "0,0.2,0.4,0.6,0.7,0.8"

ORT = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
f, x, repeats = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
s = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = x.reshape([-1] + list(i.shape[1:])).astype(np.float32)
s.run(None, {i.name: x})
t = []
for _ in range(repeats):
    t0 = time.perf_counter(); s.run(None, {i.name: x}); t.append(time.perf_counter() - t0)
print(json.dumps({"seconds": sorted(t)[len(t) // 2], "onnxruntime": ort.__version__}))
"""


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ours(binary, ck, x, samples, repeats=REPEATS, warm=None):
    """Median `seconds` of `eval` over `repeats` processes, each timing one prediction (cold:
    fresh buffers, threads woken), or with `warm`, over as many processes each reporting the
    median of `warm` timed predictions after an untimed one (`eval --repeats`: warmed up as
    TF and onnxruntime are timed here); and the peak RSS of the processes."""
    secs, rss, out = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.Popen([binary, "eval", ck, "--data", x, "--samples", str(samples), "--json"] + (["--repeats", str(warm)] if warm else []),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        text, err = p.stdout.read(), p.stderr.read()
        if status:
            raise RuntimeError("eval %s: %s" % (ck, err))
        out = json.loads(text)
        secs.append(out["seconds"])
        rss.append(ru.ru_maxrss / 1024.0)
    return statistics.median(secs), max(rss), out


def tf(prefix, x, samples):
    if not os.path.exists(PY):
        return None
    out = json.loads(run([PY, os.path.join(ROOT, "bench", "infer_tf.py"), prefix, x, str(samples), str(REPEATS)]).strip().splitlines()[-1])
    return out


def onnxruntime(ck, x, samples, tag):
    if not os.path.exists(PY):
        return None
    f = os.path.join(WORK, tag + ".onnx")
    run([B, "export-onnx", ck, "-o", f, "--mode", "mc", "--samples", str(samples), "--sparse", "never"])
    out = json.loads(run([PY, "-c", ORT, f, x, str(REPEATS)]).strip().splitlines()[-1])
    os.remove(f)
    return out


def prefix_of(ck):
    with open(os.path.join(ck, "checkpoint")) as f:
        name = re.search(r'model_checkpoint_path: "(.*)"', f.read()).group(1)
    return os.path.join(ck, name)


def pruned(ck, tag):
    out = os.path.join(WORK, tag + "_p70")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    run([B, "prune", ck, "-o", os.path.join(out, os.path.basename(prefix_of(ck))), "--sparsity", "0.7"])
    for f in ("analysis.json", "expected.json"):
        if os.path.exists(os.path.join(ck, f)):
            shutil.copy(os.path.join(ck, f), out)
    return out


def weight_bytes(ck):
    """Bytes of the float32 tensors of the checkpoint's data file (mu, rho, biases)."""
    return sum(os.path.getsize(os.path.join(ck, f)) for f in os.listdir(ck) if ".data-" in f)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_models import MODELS  # noqa: E402  (the benchmark models' layers, for the memory bound)

# Examples per Monte Carlo chunk of the engine (`MC_CHUNK` in model/src/engine/predict.rs).
MC_CHUNK = 1024
# The process itself: binary and libraries (5 MiB resident before the model is read), rayon's
# threads and their allocator arenas (`eval` of the 0.6 MiB BNN-FC peaks at 18 MiB).
PROCESS_MIB = 16


def activation_bytes(model, n, samples, threads):
    """The batch's activations of `eval --samples S` on `n` examples, from the architecture:
    T = min(threads, S) samples run at once, each on m = min(n, MC_CHUNK) examples and holding
    one layer's input and output (the largest input + output of a weight layer, before
    pooling); plus the first weight layer's patches (conv) and mean product, computed once and
    shared by every sample (when S > 1). float32."""
    shape, layers = MODELS[model]
    shape, m, t = list(shape), min(n, MC_CHUNK), max(1, min(threads, samples))
    per_sample, shared = 0, None
    for kind, *a in layers:
        size = 1
        for d in shape:
            size *= d
        if kind == "pool":
            shape = [shape[0] // 2, shape[1] // 2, shape[2]]
            continue
        if kind == "flatten":
            shape = [size]
            continue
        if kind == "conv":
            out, patches = shape[:2] + [a[0]], shape[0] * shape[1] * a[1] * a[1] * shape[2]
        else:
            out, patches = [a[0]], 0
        out_size = 1
        for d in out:
            out_size *= d
        per_sample = max(per_sample, size + out_size)
        if shared is None:
            shared = patches + out_size if samples > 1 else 0
        shape = out
    return 4 * m * (t * per_sample + (shared or 0))


def memory_table(results):
    """Issue 10's memory criterion per run: peak RSS of `eval` against 2 x the weight bytes +
    the batch's activations (`activation_bytes`) + the process's own PROCESS_MIB."""
    threads = os.cpu_count() or 1
    lines = ["", "### Peak memory of `eval` against issue 10's bound", "",
             "Bound = 2 x W (the checkpoint's float32 weight bytes: mu, rho, biases) + A (the batch's "
             "activations: min(threads, S) = %d samples at once, each holding the largest input + output "
             "of a weight layer, before pooling, for min(n, %d) examples; plus the first weight layer's "
             "patches and mean product, shared by the samples) + %d MiB for the process itself (binary, "
             "libraries, threads). Peak = `ru_maxrss` of `eval`, largest of the runs." % (threads, MC_CHUNK, PROCESS_MIB),
             "", "| model | examples x S | W MiB | A MiB | bound MiB | peak RSS MiB | peak / bound | met |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        a = activation_bytes(r["model"], r["n"], r["s"], threads) / 2**20
        bound = 2 * r["weights"] / 2**20 + a + PROCESS_MIB
        lines.append("| %s, %s | %d x %d | %.1f | %.1f | %.0f | %.0f | %.2f | %s |" % (
            r["name"], r["variant"], r["n"], r["s"], r["weights"] / 2**20, a, bound, r["rss"], r["rss"] / bound,
            "yes" if r["rss"] <= bound else "**no**"))
    return lines


def main():
    # The 2-vCPU host is shared: the table says how busy it was when the run began.
    load = os.getloadavg()[0]
    if not all(os.path.exists(os.path.join(WORK, m, "checkpoint")) for m in ("bnn_fc", "bnn_conv", "vgg16")):
        run([PY, os.path.join(ROOT, "bench", "make_models.py"), WORK])
    kb = json.loads(run([KB]).strip().splitlines()[-1])
    peak = kb["gemm_peak_gflops"]
    models = [
        ("BNN-FC 64-256-256-10 (digits)", os.path.join(WORK, "bnn_fc"),
         os.path.join(ROOT, "fixtures", "data", "digits_test_x.npy"), 100, "fc"),
        ("BNN-Conv 28x28x1 (5x5x32, pool, 5x5x64, pool, dense 10)", os.path.join(WORK, "bnn_conv"),
         os.path.join(WORK, "x28_x.npy"), 10, "conv"),
        ("VGG-16 BNN, 32x32x3 (13 Conv2DFlipout + 2 DenseFlipout)", os.path.join(WORK, "vgg16"),
         os.path.join(WORK, "x32_x.npy"), 10, "vgg"),
    ]
    results = []
    for name, ck, x, s, tag in models:
        model = os.path.basename(ck)
        for variant, path in (("dense", ck), ("70% pruned", pruned(ck, tag))):
            o_sec, o_rss, o_out = ours(B, path, x, s, WARM_PROCESSES, warm=REPEATS)
            cold = ours(B, path, x, s)[0]
            # 649c966 needs minutes per run on the 28x28 conv net and ~30 s on VGG-16: fewer runs.
            base = ours(BASELINE, path, x, s, 1 if tag == "vgg" else REPEATS)[0] if BASELINE and tag != "conv" else None
            t = tf(prefix_of(path), x, s)
            r = onnxruntime(path, x, s, tag)
            flops = o_out["nominal_flops"]
            gflops = flops / o_sec / 1e9
            results.append(dict(name=name, variant=variant, n=o_out["n"], s=s, ours=o_sec, cold=cold, rss=o_rss, tag=tag, flops=flops, model=model,
                                base=base, tf=t and t["predict_seconds"], ort=r and r["seconds"],
                                gflops=gflops, weights=weight_bytes(path), sparse=o_out["sparse_layers"],
                                layers=o_out["layers"], acc=o_out["accuracy"],
                                tfv=t and t["tensorflow"], ortv=r and r["onnxruntime"]))
            print(json.dumps(results[-1]), flush=True)
    sweeps = {}
    for label, binary in (("ours", B), ("649c966", BASELINE)):
        if binary:
            t0 = time.perf_counter()
            run([binary, "sweep", os.path.join(WORK, "vgg16"), "--data", os.path.join(WORK, "x32_x.npy"),
                 "--fractions", SWEEP_FRACTIONS, "--samples", "10", "--repeats", "1"])
            sweeps[label] = time.perf_counter() - t0
    print(json.dumps(sweeps), flush=True)
    write_doc(kb, results, sweeps, load)


def ratio(a, b):
    return "%.1fx" % (a / b) if a and b else "-"


# Issue 10's targets per model tag: ours at least this many times faster than TF and onnxruntime.
TARGETS = {"fc": (10, 3), "conv": (5, 2), "vgg": (2, 2)}


def flop_table(results, kb):
    """Which time targets are reachable at all: the nominal FLOPs of each run against the
    time they need at the measured GEMM peak on all threads."""
    peak = kb["gemm_peak_gflops"]
    lines = ["", "### FLOP accounting: what the GEMM peak allows", "",
             "Nominal work of S Flipout samples (2 FLOPs per multiply-add, 2 products per layer and "
             "sample, the first layer's mean product once, pruned weights counted), the time it needs "
             "at the GEMM peak measured in this run (%.1f GFLOP/s on %d threads), and the time the "
             "issue's targets ask for (the smaller of TF / target and ORT / target)." % (peak, kb["threads"]),
             "", "| model | examples x S | GFLOP | s at GEMM peak | targets (x TF, x ORT) | target s | reachable | ours s | ours % of peak |",
             "|---|---|---:|---:|---|---:|---|---:|---:|"]
    for r in results:
        if r["variant"] != "dense":
            continue
        floor = r["flops"] / 1e9 / peak
        a, b = TARGETS[r["tag"]]
        want = min([t for t in (r["tf"] and r["tf"] / a, r["ort"] and r["ort"] / b) if t] or [float("nan")])
        lines.append("| %s | %d x %d | %.1f | %.3f | %dx, %dx | %.3f | %s | %.3f | %.0f%% |" % (
            r["name"], r["n"], r["s"], r["flops"] / 1e9, floor, a, b, want,
            "yes" if floor <= want else "no (needs %.0f GFLOP/s)" % (r["flops"] / 1e9 / want),
            r["ours"], 100 * floor / r["ours"]))
    return lines


def write_doc(kb, results, sweeps, load):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    peak = kb["gemm_peak_gflops"]
    tfv = next((r["tfv"] for r in results if r["tfv"]), "not installed")
    ortv = next((r["ortv"] for r in results if r["ortv"]), "not installed")
    lines = [
        "<!-- bench:infer -->",
        "## Monte Carlo inference against TensorFlow and onnxruntime (issues 5 and 10)",
        "",
        "Measured by `scripts/bench-infer.sh` (driver `bench/infer_bench.py`) on %s, %d cores, load average "
        "%.1f at the start (a shared virtual machine: runs of ~50 ms are noisy; ratios are from the same run), "
        "prediction time only (no loading), all warmed up and timed in-process: TF %s = `import_meta_graph` + "
        "`restore`, one warm-up, then %d times S `sess.run`s of the Flipout logits (`bench/infer_tf.py`), median; "
        "ORT = onnxruntime %s on `export-onnx --mode mc --samples S` (one `run` draws all S samples), one warm-up, "
        "median of %d runs; ours = `bnn-convert eval --samples S --repeats %d` (Flipout; one warm-up, median of %d "
        "predictions), median of %d processes. Ours cold = one prediction per process (`eval` without `--repeats`: "
        "fresh buffers, threads woken from sleep), median of %d processes; 649c966 = that, built from the commit "
        "before issue 10 (it has no `--repeats`)." % (cpu, os.cpu_count(), load, tfv, REPEATS, ortv, REPEATS, REPEATS, REPEATS, WARM_PROCESSES, REPEATS),
        "",
        "| model | examples x S | TF s | ORT s | 649c966 s | ours cold s | ours s | TF/ours | ORT/ours | 649c966/ours | ours GFLOP/s (% of GEMM peak) | CSR layers | peak RSS MiB (weights MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append("| %s, %s | %d x %d | %s | %s | %s | %.4f | %.4f | %s | %s | %s | %.1f (%.0f%%) | %d of %d | %.0f (%.1f) |" % (
            r["name"], r["variant"], r["n"], r["s"],
            "%.4f" % r["tf"] if r["tf"] else "-", "%.4f" % r["ort"] if r["ort"] else "-",
            "%.4f" % r["base"] if r["base"] else "-", r["cold"], r["ours"],
            ratio(r["tf"], r["ours"]), ratio(r["ort"], r["ours"]), ratio(r["base"], r["ours"]),
            r["gflops"], 100 * r["gflops"] / peak, r["sparse"], r["layers"], r["rss"], r["weights"] / 2**20))
    lines += flop_table(results, kb)
    lines += memory_table(results)
    lines += ["", "70% pruned against dense, ours: " + ", ".join(
        "%s **%.2fx** (cold %.2fx)" % (results[i]["name"].split(" ")[0], results[i]["ours"] / results[i + 1]["ours"], results[i]["cold"] / results[i + 1]["cold"])
        for i in range(0, len(results), 2)) + "."]
    if len(sweeps) == 2:
        lines += ["", "`sweep` of the VGG-16 BNN, fractions %s, 10 samples, one repeat (whole process, "
                  "including pruning and the mean network): ours %.1f s, 649c966 %.1f s: **%.1fx** faster."
                  % (SWEEP_FRACTIONS, sweeps["ours"], sweeps["649c966"], sweeps["649c966"] / sweeps["ours"])]
    lines += [
        "",
        "GEMM peak of this machine (`model/examples/kernel_bench.rs`, square 1024 SGEMMs through the "
        "engine's GEMM, one per thread, best run): **%.1f GFLOP/s** on %d threads (%.1f on one). Our GFLOP/s "
        "count the nominal Flipout work, 2 products (mean and perturbation) of every layer per sample "
        "(the first layer's mean product once), pruned weights included." % (peak, kb["threads"], kb["gemm_peak_gflops_one_thread"]),
        "",
        "### Sparse kernels against GEMM by layer (the `--sparse auto` rule)",
        "",
        "One product: the row-major CSR kernel against one GEMM. Flipout (both products, mean and "
        "perturbation, as a sample runs them): one GEMM against `[mu | D]` (k x 2n) against the "
        "transposed sparse kernel (`Csr::spmm_t`, both products in one pass over the kept weights); "
        "speedup = GEMM s / sparse s, one thread, best of runs.",
        "",
        "| layer | patch rows x k x n | GEMM GFLOP/s | CSR s at kept 0.7 / 0.5 / 0.3 / 0.1 (GEMM s) | GEMM faster up to pruned | Flipout GEMM s | transposed sparse speedup at kept 0.7 / 0.5 / 0.3 / 0.1 |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for c in kb["crossover"]:
        cs = {round(v["kept"], 1): v["seconds"] for v in c["csr"]}
        fs = {round(v["kept"], 1): v["speedup"] for v in c.get("flipout_sparse", [])}
        lines.append("| %s | %d x %d x %d | %.1f | %s (%.2e) | %.0f%% | %s | %s |" % (
            c["layer"], c["rows"], c["k"], c["n"], c["gemm_gflops"],
            " / ".join("%.2e" % cs[k] for k in (0.7, 0.5, 0.3, 0.1)), c["gemm_seconds"], 100 * c["gemm_faster_up_to_pruned"],
            "%.2e" % c["flipout_gemm_seconds"] if "flipout_gemm_seconds" in c else "-",
            " / ".join("%.2fx" % fs[k] for k in (0.7, 0.5, 0.3, 0.1)) if fs else "-"))
    lines += ["", "Python %s." % platform.python_version(), "<!-- /bench:infer -->"]
    section = "\n".join(lines) + "\n"
    with open(DOC) as f:
        doc = f.read()
    if "<!-- bench:infer -->" in doc:
        doc = re.sub(r"<!-- bench:infer -->.*?<!-- /bench:infer -->\n?", lambda _: section, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    tmp = DOC + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, DOC)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
