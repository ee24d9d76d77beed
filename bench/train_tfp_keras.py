#!/usr/bin/env python3
"""Reference trainer for `bnn-train`'s benchmarks: the same models written the usual way,
with TensorFlow Probability's Keras layers (tf_keras + tfp.layers), trained by `model.fit`.

    python bench/train_tfp_keras.py --data-dir DIR --dataset mnist --arch fc [--deterministic]
        [--hidden 256,256] [--batch-size 64] [--epochs 5] [--lr 1e-3] [--threads N]

Models (as in bnn-train): fc = DenseFlipout den_1..den_k (ReLU) + den_{k+1} logits;
conv = Convolution2DFlipout(32, 5, SAME, ReLU) Conv_1, MaxPooling2D(2, SAME),
Convolution2DFlipout(64, 5, SAME, ReLU) Conv_2, Flatten, DenseFlipout den_out.
--deterministic uses Dense / Conv2D. Loss: sparse softmax cross entropy + KL / N
(kernel_divergence_fn scaled by the number of training examples), Adam.

Prints one JSON object: images_per_sec over the training steps (the first step, which
traces the graph, excluded; evaluation excluded), test_accuracy, and the settings.
Data are read from local files only (MNIST IDX layout or the bundled digits .npy).
"""
import argparse
import json
import os
import struct
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
import tf_keras  # noqa: E402


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 8:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(kind, d):
    if kind == "digits":
        xs = [np.load(os.path.join(d, f"digits_{s}_x.npy")).reshape(-1, 8, 8, 1) for s in ("train", "test")]
        ys = [np.load(os.path.join(d, f"digits_{s}_y.npy")) for s in ("train", "test")]
        return xs[0], ys[0], xs[1], ys[1]
    x = read_idx(os.path.join(d, "train-images-idx3-ubyte")).astype(np.float32)[..., None] / 255.0
    y = read_idx(os.path.join(d, "train-labels-idx1-ubyte")).astype(np.int64)
    tx = read_idx(os.path.join(d, "t10k-images-idx3-ubyte")).astype(np.float32)[..., None] / 255.0
    ty = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
    return x, y, tx, ty


def model(arch, bayesian, hidden, n_train, image):
    kl = lambda q, p, _: tfp.distributions.kl_divergence(q, p) / n_train  # noqa: E731
    L = tf_keras.layers
    if bayesian:
        dense = lambda u, act, name: tfp.layers.DenseFlipout(u, activation=act, name=name, kernel_divergence_fn=kl)  # noqa: E731
        conv = lambda f, name: tfp.layers.Convolution2DFlipout(f, 5, padding="SAME", activation="relu", name=name, kernel_divergence_fn=kl)  # noqa: E731
    else:
        dense = lambda u, act, name: L.Dense(u, activation=act, name=name)  # noqa: E731
        conv = lambda f, name: L.Conv2D(f, 5, padding="SAME", activation="relu", name=name)  # noqa: E731
    layers = [L.InputLayer(input_shape=image)]
    if arch == "fc":
        layers.append(L.Flatten())
        layers += [dense(u, "relu", f"den_{i + 1}") for i, u in enumerate(hidden)]
        layers.append(dense(10, None, f"den_{len(hidden) + 1}"))
    else:
        layers += [conv(32, "Conv_1"), L.MaxPooling2D(2, 2, padding="SAME"), conv(64, "Conv_2"), L.Flatten(), dense(10, None, "den_out")]
    return tf_keras.Sequential(layers)


class StepTimer(tf_keras.callbacks.Callback):
    """Wall time of every training batch."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    ap.add_argument("--arch", choices=["fc", "conv"], default="fc")
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    tf.random.set_seed(a.seed)
    x, y, tx, ty = load(a.dataset, a.data_dir)
    hidden = [int(h) for h in a.hidden.split(",") if h]
    m = model(a.arch, not a.deterministic, hidden, len(x), x.shape[1:])
    m.compile(optimizer=tf_keras.optimizers.Adam(a.lr), loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    # Whole batches only, as bnn-train does.
    n = len(x) // a.batch_size * a.batch_size
    timer = StepTimer()
    m.fit(x[:n], y[:n], batch_size=a.batch_size, epochs=a.epochs, shuffle=True, verbose=0, callbacks=[timer])
    steps = timer.times[1:]
    _, acc = m.evaluate(tx, ty, batch_size=500, verbose=0)
    print(json.dumps({
        "arch": a.arch,
        "bayesian": not a.deterministic,
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "steps_timed": len(steps),
        "images_per_sec": len(steps) * a.batch_size / sum(steps),
        "test_accuracy": float(acc),
        "parameters": int(m.count_params()),
        "tensorflow": tf.__version__,
        "tfp": tfp.__version__,
    }))


if __name__ == "__main__":
    main()
