#!/usr/bin/env python3
"""TensorFlow side of scripts/bench-infer.sh: 100-sample Monte Carlo prediction of a TF1
checkpoint's test set, the way BPrune / fixtures/generate.py do it.

    python bench/infer_tf.py PREFIX X.npy [SAMPLES] [REPEATS]

Restores the graph with import_meta_graph + Saver.restore, then runs the stored Flipout
logits tensor SAMPLES times on the whole test set (each run = a fresh weight perturbation)
and averages the softmax outputs.  Prints JSON: `predict_seconds` (median over REPEATS of the
SAMPLES runs, after one warm-up run), `total_seconds` (import + restore + one timed
prediction, from process start), and the resulting accuracy inputs are not needed here.
"""
import json
import os
import sys
import time

T0 = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    import numpy as np
    import tensorflow as tf

    prefix, x_path = sys.argv[1], sys.argv[2]
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    x = np.load(x_path)
    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        saver = tf.compat.v1.train.import_meta_graph(prefix + ".meta")
        x_ph = g.get_tensor_by_name("Placeholder:0")
        x = x.reshape([-1] + [int(d) for d in x_ph.shape[1:]])
        # The logits: the output of the last BiasAdd of the model's layers.
        logits_name = json.load(open(os.path.join(os.path.dirname(prefix), "expected.json")))["graph"]["logits"] \
            if os.path.exists(os.path.join(os.path.dirname(prefix), "expected.json")) else None
        if logits_name is None:
            logits_name = json.load(open(os.path.join(os.path.dirname(prefix), "analysis.json")))["graph"]["logits"]
        probs = tf.nn.softmax(g.get_tensor_by_name(logits_name))
        with tf.compat.v1.Session(graph=g) as sess:
            saver.restore(sess, prefix)
            sess.run(probs, feed_dict={x_ph: x})  # warm-up
            times = []
            for r in range(repeats):
                t = time.perf_counter()
                mean = np.mean([sess.run(probs, feed_dict={x_ph: x}) for _ in range(samples)], axis=0)
                times.append(time.perf_counter() - t)
                if r == 0:
                    total = time.perf_counter() - T0
    times.sort()
    print(json.dumps({"predict_seconds": times[len(times) // 2], "predict_all": times,
                      "total_seconds": total, "samples": samples, "n": int(x.shape[0]),
                      "tensorflow": tf.__version__, "mean_prob_sum": float(mean.sum())}))


if __name__ == "__main__":
    main()
