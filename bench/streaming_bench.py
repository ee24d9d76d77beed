#!/usr/bin/env python3
"""Issue 12's benchmark without compiling the benchmark harness (whose dev-dependencies take long
to build in release): the same measurements as `cargo bench -p bnn-convert --bench
streaming_vs_cp`, driving the release binaries.

    cargo build --release -p bnn-convert --bin bnn-convert
    cargo build --release -p bnn-formats --example synthetic_bnn
    python3 bench/streaming_bench.py [--sizes 1024,4096] [--runs 3] [--keep]

Each command (`snr`, `prune --sparsity 0.7`, `prune --threshold 1` to TF and to safetensors,
`prune-batch -j 1`) runs --runs times, each paired with a `cp` of the data shard right before it
(dirty pages written back with `sync` before each); seconds and ratios are medians, peak RSS is
the largest `ru_maxrss` reported by `wait4` for that command's own process. Writes the section
between `<!-- bench:streaming -->` markers in docs/performance.md.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from perfdoc import write_section

ROOT = Path(__file__).resolve().parent.parent


def measured(argv):
    """Seconds and peak RSS (KiB) of one run of argv, output discarded."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(argv, stdout=null)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode})")
    return secs, usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    binary = ROOT / "target/release/bnn-convert"
    generator = ROOT / "target/release/examples/synthetic_bnn"
    base = ROOT / "bench-data/streaming"
    cores = os.cpu_count()
    load = os.getloadavg()
    body = (
        "## Checkpoints bigger than memory: `snr` and `prune` against `cp` (issue 12)\n\n"
        f"Measured by `bench/streaming_bench.py` (the same measurements as `cargo bench -p bnn-convert --bench streaming_vs_cp`) "
        f"on this project's {cores}-core machine, shared with other jobs (load average {load[0]:.1f} at the start), so timings are "
        "noisy; synthetic float32 BNN checkpoints (4 Flipout layers of [n, 4096] mu and rho, `formats::synthetic`), page cache "
        f"warm, dirty pages written back (`sync`) before each timed command; every command runs {a.runs} times, each paired with "
        "a `cp` of the data shard right before it: seconds and ratios are medians of the runs (ratio range in brackets), peak RSS "
        "is the largest `ru_maxrss` (`wait4`) of that command's own runs.\n\n"
    )
    for mib in [int(s) for s in a.sizes.split(",") if s.strip()]:
        folder = base / str(mib)
        prefix = folder / "model.ckpt-1000"
        data = Path(f"{prefix}.data-00000-of-00001")
        n = mib * 1024 * 1024 // (4 * 2 * 4096 * 4)
        expected = 4 * (2 * n * 4096 + 4096) * 4 + 8
        if not data.is_file() or data.stat().st_size != expected:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            subprocess.run([generator, prefix, str(n)], check=True)
        size = data.stat().st_size
        copy, out_dir, out_st, batch_out = base / "copy.bin", base / "out", base / "out.safetensors", base / "batch-out"

        def clean():
            copy.unlink(missing_ok=True)
            out_st.unlink(missing_ok=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            shutil.rmtree(batch_out, ignore_errors=True)

        subprocess.run(["cat", data], stdout=subprocess.DEVNULL, check=True)
        out_prefix = out_dir / "model.ckpt-1000"
        commands = [
            ("`snr` (statistics, no plot)", ["snr", prefix]),
            ("`prune --sparsity 0.7` (TF output)", ["prune", "--sparsity", "0.7", prefix, "-o", out_prefix]),
            ("`prune --threshold 1` (TF output)", ["prune", "--threshold", "1", prefix, "-o", out_prefix]),
            ("`prune --threshold 1` (safetensors output)", ["prune", "--threshold", "1", prefix, "-o", out_st]),
            ("`prune-batch -j 1 --threshold 1` (this one checkpoint)", ["prune-batch", "--quiet", "-j", "1", "--threshold", "1", "-o", batch_out, folder]),
        ]
        rows = {what: {"secs": [], "ratios": [], "rss": 0} for what, _ in commands}
        cps = []
        for _ in range(a.runs):
            for what, args in commands:
                clean()
                subprocess.run(["sync"])
                c, _ = measured(["cp", data, copy])
                copy.unlink(missing_ok=True)
                subprocess.run(["sync"])
                t, rss = measured([binary, *args])
                cps.append(c)
                rows[what]["secs"].append(t)
                rows[what]["ratios"].append(t / c)
                rows[what]["rss"] = max(rows[what]["rss"], rss)
                print(f"{mib} MiB {what}: {t:.3f} s (cp {c:.3f} s), {rss / 1024:.1f} MiB", flush=True)
        clean()
        body += (
            f"### {size / 2**30:.2f} GiB checkpoint ({size}-byte data shard, {4 * n * 4096 // 1_000_000} M weights)\n\n"
            "| command | seconds | ratio to `cp` | peak RSS |\n|---|---|---|---|\n"
            f"| `cp` of the data shard | {statistics.median(cps):.3f} | 1 | - |\n"
        )
        for what, r in rows.items():
            body += (
                f"| {what} | {statistics.median(r['secs']):.3f} | **{statistics.median(r['ratios']):.2f}x** "
                f"({min(r['ratios']):.2f}-{max(r['ratios']):.2f}) | **{r['rss'] / 1024:.1f} MiB** |\n"
            )
        body += "\n"
        # Each size's table as soon as it is measured.
        write_section("streaming", body)
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
    body += (
        f"Load average at the end: {os.getloadavg()[0]:.1f}.\n\n"
        "Targets (issue 12): `snr` at most 2.5x `cp` and under 128 MiB; `prune --sparsity 0.7` at most 3x and under 128 MiB; "
        "`prune --threshold 1` at most 1.6x and under 64 MiB; the same memory bounds at 4 GiB.\n"
    )
    print(body)
    write_section("streaming", body)


if __name__ == "__main__":
    main()
