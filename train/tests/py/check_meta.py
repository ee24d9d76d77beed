#!/usr/bin/env python3
"""Loads a bnn-train checkpoint the way TF1 users do and prints what TensorFlow saw, as JSON.

Usage: python check_meta.py PREFIX DIGITS_DIR

    saver = tf.compat.v1.train.import_meta_graph(PREFIX + '.meta')
    saver.restore(sess, PREFIX)

then: compares every restored global variable with tf.train.load_checkpoint(PREFIX)
(bit-exact), evaluates the restored graph's accuracy on the digits test set by feeding
the first two ops of OpsNames.txt (input and label placeholders), and runs the
`train_op` collection once to check the graph still trains (global_step + 1).
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    prefix, digits = sys.argv[1], sys.argv[2]
    folder = os.path.dirname(prefix)
    with open(os.path.join(folder, "OpsNames.txt")) as f:
        ops = [l.strip() for l in f if l.strip()]
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(prefix + ".meta")
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, prefix)
            gvars = tf.compat.v1.global_variables()
            tvars = [v.op.name for v in tf.compat.v1.trainable_variables()]
            values = sess.run(gvars)
            equal = all(np.array_equal(v, reader.get_tensor(var.op.name)) for var, v in zip(gvars, values))
            x = np.load(os.path.join(digits, "digits_test_x.npy"))
            y = np.load(os.path.join(digits, "digits_test_y.npy"))
            inp = graph.get_tensor_by_name(ops[0] + ":0")
            lab = graph.get_tensor_by_name(ops[1] + ":0")
            correct = graph.get_tensor_by_name("loss/accuracy/Sum:0")
            acc = float(sess.run(correct, {inp: x, lab: y})) / len(y)
            step = tf.compat.v1.train.get_global_step(graph) or graph.get_tensor_by_name("global_step:0")
            before = int(sess.run(step))
            train_op = tf.compat.v1.get_collection("train_op")[0]
            sess.run(train_op, {inp: x[:32], lab: y[:32]})
            after = int(sess.run(step))
    print(json.dumps({
        "checkpoint_keys": {k: list(v) for k, v in shapes.items()},
        "global_variables": [v.op.name for v in gvars],
        "trainable_variables": tvars,
        "restored_equal_to_checkpoint": bool(equal),
        "test_accuracy": acc,
        "step_before": before,
        "step_after_train_op": after,
    }))


if __name__ == "__main__":
    main()
