#!/usr/bin/env python3
"""Reference trainer for `bnn-train`'s benchmarks: the same models written the usual way,
with TensorFlow Probability's Keras layers (tf_keras + tfp.layers), trained by `model.fit`.

    python bench/train_tfp_keras.py --data-dir DIR --dataset mnist --arch fc [--deterministic]
        [--hidden 256,256] [--batch-size 64] [--epochs 5] [--lr 1e-3] [--threads N]
    python bench/train_tfp_keras.py --data-dir DIR --dataset cifar10 --arch vgg16 [--width 0.5]
        [--max-steps 8] [--no-eval]

Models (as in bnn-train): fc = DenseFlipout den_1..den_k (ReLU) + den_{k+1} logits;
conv = Convolution2DFlipout(32, 5, SAME, ReLU) Conv_1, MaxPooling2D(2, SAME),
Convolution2DFlipout(64, 5, SAME, ReLU) Conv_2, Flatten, DenseFlipout den_out.
vgg16 = 13 Convolution2DFlipout(3x3, SAME) Conv_k, each followed by BatchNormalization
(Conv_k_bn, Keras' defaults: momentum 0.99, epsilon 1e-3) and ReLU, MaxPooling2D(2, SAME)
after each of the 5 blocks, Flatten, DenseFlipout den_1, den_2 (512 * width, ReLU), den_3.
--deterministic uses Dense / Conv2D. Loss: sparse softmax cross entropy + KL / N
(kernel_divergence_fn scaled by the number of training examples), Adam.

Prints one JSON object: images_per_sec over the training steps (the first step, which
traces the graph, excluded; evaluation excluded), test_accuracy, and the settings.
Data are read from local files only (MNIST IDX layout, CIFAR-10 binary batches or the
bundled digits .npy).
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


def read_cifar10(paths):
    raw = np.concatenate([np.fromfile(p, np.uint8) for p in paths])
    if raw.size % 3073:
        raise SystemExit(f"{paths}: not CIFAR-10 binary records of 3073 bytes")
    rec = raw.reshape(-1, 3073)
    # Records are label, then 32x32 planes R, G, B: to NHWC in [0, 1], as bnn-train reads them.
    x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return x, rec[:, 0].astype(np.int64)


def load(kind, d):
    if kind == "cifar10":
        base = os.path.join(d, "cifar-10-batches-bin")
        base = base if os.path.isdir(base) else d
        x, y = read_cifar10([os.path.join(base, f"data_batch_{i}.bin") for i in range(1, 6)])
        tx, ty = read_cifar10([os.path.join(base, "test_batch.bin")])
        return x, y, tx, ty
    if kind == "digits":
        xs = [np.load(os.path.join(d, f"digits_{s}_x.npy")).reshape(-1, 8, 8, 1) for s in ("train", "test")]
        ys = [np.load(os.path.join(d, f"digits_{s}_y.npy")) for s in ("train", "test")]
        return xs[0], ys[0], xs[1], ys[1]
    x = read_idx(os.path.join(d, "train-images-idx3-ubyte")).astype(np.float32)[..., None] / 255.0
    y = read_idx(os.path.join(d, "train-labels-idx1-ubyte")).astype(np.int64)
    tx = read_idx(os.path.join(d, "t10k-images-idx3-ubyte")).astype(np.float32)[..., None] / 255.0
    ty = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
    return x, y, tx, ty


def model(arch, bayesian, hidden, n_train, image, width=1.0):
    kl = lambda q, p, _: tfp.distributions.kl_divergence(q, p) / n_train  # noqa: E731
    L = tf_keras.layers
    if bayesian:
        dense = lambda u, act, name: tfp.layers.DenseFlipout(u, activation=act, name=name, kernel_divergence_fn=kl)  # noqa: E731
        conv = lambda f, name: tfp.layers.Convolution2DFlipout(f, 5, padding="SAME", activation="relu", name=name, kernel_divergence_fn=kl)  # noqa: E731
    else:
        dense = lambda u, act, name: L.Dense(u, activation=act, name=name)  # noqa: E731
        conv = lambda f, name: L.Conv2D(f, 5, padding="SAME", activation="relu", name=name)  # noqa: E731
    layers = [L.InputLayer(input_shape=image)]
    if arch == "vgg16":
        if bayesian:
            conv3 = lambda f, name: tfp.layers.Convolution2DFlipout(f, 3, padding="SAME", name=name, kernel_divergence_fn=kl)  # noqa: E731
        else:
            conv3 = lambda f, name: L.Conv2D(f, 3, padding="SAME", name=name)  # noqa: E731
        ch = lambda c: max(1, round(c * width))  # noqa: E731
        k = 0
        for block in ([64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3):
            for f in block:
                k += 1
                layers += [conv3(ch(f), f"Conv_{k}"), L.BatchNormalization(name=f"Conv_{k}_bn"), L.ReLU()]
            layers.append(L.MaxPooling2D(2, 2, padding="SAME"))
        layers += [L.Flatten(), dense(ch(512), "relu", "den_1"), dense(ch(512), "relu", "den_2"), dense(10, None, "den_3")]
        return tf_keras.Sequential(layers)
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
    ap.add_argument("--dataset", choices=["mnist", "digits", "cifar10"], default="mnist")
    ap.add_argument("--arch", choices=["fc", "conv", "vgg16"], default="fc")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0, help="train this many steps (one epoch of them) instead of --epochs")
    ap.add_argument("--no-eval", action="store_true")
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
    m = model(a.arch, not a.deterministic, hidden, len(x), x.shape[1:], a.width)
    m.compile(optimizer=tf_keras.optimizers.Adam(a.lr), loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    # Whole batches only, as bnn-train does.
    n = len(x) // a.batch_size * a.batch_size
    epochs = a.epochs
    if a.max_steps:
        n, epochs = min(n, a.max_steps * a.batch_size), 1
    timer = StepTimer()
    m.fit(x[:n], y[:n], batch_size=a.batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
    steps = timer.times[1:]
    acc = float("nan") if a.no_eval else m.evaluate(tx, ty, batch_size=500, verbose=0)[1]
    print(json.dumps({
        "arch": a.arch,
        "bayesian": not a.deterministic,
        "batch_size": a.batch_size,
        "epochs": epochs,
        "width": a.width,
        "steps_timed": len(steps),
        "images_per_sec": len(steps) * a.batch_size / sum(steps),
        "test_accuracy": float(acc),
        "parameters": int(m.count_params()),
        "tensorflow": tf.__version__,
        "tfp": tfp.__version__,
    }))


if __name__ == "__main__":
    main()
