#!/usr/bin/env python3
"""Benchmark models for scripts/bench-infer.sh (issue 10): untrained TF1 graph-mode Flipout
networks with a `.meta`, written by tf.train.Saver exactly like fixtures/generate_conv.py
(weights from TFP's initializers; kernel means He-scaled so that deep nets keep finite
activations), plus random inputs.  Timing does not depend on training.

    .venv/bin/python bench/make_models.py OUT_DIR

Writes OUT_DIR/{bnn_fc,bnn_conv,vgg16}/model.ckpt-0.* + analysis.json (the logits tensor name, read
by bench/infer_tf.py) and OUT_DIR/{x28,x32}_{x,y}.npy (inputs, random labels):
  bnn_fc:   BNN-FC 64-256-256-10 (issue 10's MLP) on flattened 8x8 digits: DenseFlipout 256
            relu, 256 relu, 10
  bnn_conv: the paper's BNN-Conv on 28x28x1: Conv 5x5x32 SAME relu, pool 2, Conv 5x5x64
            SAME relu, pool 2, Flatten, DenseFlipout 10
  vgg16:    VGG-16 on 32x32x3: 13 3x3 SAME Conv2DFlipout (64,64 | 128,128 | 256x3 | 512x3 |
            512x3, each block followed by a 2x2 pool), Flatten, DenseFlipout 512 relu, 10
"""
import json
import os
import sys
import warnings

SEED = 10
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _vgg16():
    layers = []
    for width, n in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
        layers += [("conv", width, 3)] * n + [("pool",)]
    return layers + [("flatten",), ("dense", 512, "relu"), ("dense", 10, None)]


# The benchmark models: input shape and layers ("conv", filters, size) SAME stride 1 relu,
# ("pool",) 2x2, ("flatten",), ("dense", units, activation); also read by bench/infer_bench.py
# (the memory bound of each model).
MODELS = {
    "bnn_fc": ([64], [("dense", 256, "relu"), ("dense", 256, "relu"), ("dense", 10, None)]),
    "bnn_conv": ([28, 28, 1], [("conv", 32, 5), ("pool",), ("conv", 64, 5), ("pool",), ("flatten",), ("dense", 10, None)]),
    "vgg16": ([32, 32, 3], _vgg16()),
}


def build(out, name, input_shape, layers):
    import tensorflow as tf
    import tf_keras
    import tensorflow_probability as tfp

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(SEED)
        image = tf.compat.v1.placeholder(tf.float32, [None] + input_shape)  # "Placeholder"
        post = tfp.layers.default_mean_field_normal_fn(
            loc_initializer=tf.compat.v1.initializers.variance_scaling(2.0))
        seq = [tf_keras.layers.InputLayer(input_tensor=image)]
        convs = dens = 0
        for kind, *args in layers:
            if kind == "conv":
                convs += 1
                seq.append(tfp.layers.Convolution2DFlipout(args[0], args[1], padding="SAME", activation=tf.nn.relu,
                                                          kernel_posterior_fn=post, name="Conv_%d" % convs, seed=SEED + convs))
            elif kind == "pool":
                seq.append(tf_keras.layers.MaxPooling2D(2, 2, padding="VALID"))
            elif kind == "flatten":
                seq.append(tf_keras.layers.Flatten())
            else:
                dens += 1
                seq.append(tfp.layers.DenseFlipout(args[0], activation=args[1], kernel_posterior_fn=post,
                                                   name="den_%d" % dens, seed=SEED + 100 + dens))
        model = tf_keras.Sequential(seq)
        logits = model.output
        global_step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, os.path.join(folder, "model.ckpt"), global_step=global_step)
    with open(os.path.join(folder, "analysis.json"), "w") as f:
        json.dump({"prefix": os.path.basename(prefix), "graph": {"input": "Placeholder:0", "logits": logits.name}}, f)
    print(prefix, logits.name)


def main():
    warnings.filterwarnings("ignore")
    import numpy as np

    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.RandomState(SEED)
    for name, shape in [("x28", (360, 28, 28, 1)), ("x32", (16, 32, 32, 3))]:
        np.save(os.path.join(out, name + "_x.npy"), rng.rand(*shape).astype(np.float32))
        np.save(os.path.join(out, name + "_y.npy"), rng.randint(0, 10, shape[0]).astype(np.int64))
    for name, (input_shape, layers) in MODELS.items():
        build(out, name, input_shape, layers)


if __name__ == "__main__":
    sys.exit(main())
