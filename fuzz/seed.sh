#!/usr/bin/env bash
# Seeds every fuzz target's corpus (fuzz/corpus/<target>/, git-ignored) from the fixtures:
# checkpoint indexes, .meta graphs, .npy arrays, and sparse safetensors files written by
# `bnn-convert prune --sparse` from the BNN fixtures (plus their dense conversions).
# Usage: fuzz/seed.sh   (from anywhere; builds bnn-convert if needed)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
corpus=fuzz/corpus
mkdir -p "$corpus"/{index_parser,sparse_reader,meta_reader,npy_parser}

# Fixture files share base names across folders: prefix each with its folder.
for f in fixtures/*/*.index; do
    cp "$f" "$corpus/index_parser/$(basename "$(dirname "$f")")-$(basename "$f")"
done
for f in fixtures/*/*.meta; do
    cp "$f" "$corpus/meta_reader/$(basename "$(dirname "$f")")-$(basename "$f")"
done
cp fixtures/data/*.npy "$corpus/npy_parser/"

cargo build -q -p bnn-convert
B=target/debug/bnn-convert
for fixture in tf1_bnn_fc tf1_bnn_conv; do
    for s in 0.5 0.9 0.99; do
        $B prune "fixtures/$fixture" -o "$corpus/sparse_reader/$fixture-$s.safetensors" --sparsity "$s" --sparse >/dev/null
    done
    $B prune "fixtures/$fixture" -o "$corpus/sparse_reader/$fixture-bprune.safetensors" --threshold 1 --mode bprune --sparse >/dev/null
    $B ckpt-to-safetensors "fixtures/$fixture" -o "$corpus/sparse_reader/$fixture-dense.safetensors" >/dev/null
done
for t in index_parser sparse_reader meta_reader npy_parser; do
    echo "$t: $(ls "$corpus/$t" | wc -l) seeds"
done
