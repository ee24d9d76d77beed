#!/usr/bin/env python3
"""Checks a bnn-train checkpoint of a model with batch normalization in TensorFlow, prints JSON.

Usage: python check_bn.py PREFIX DIGITS_DIR LOGITS_OP

    saver = tf.compat.v1.train.import_meta_graph(PREFIX + '.meta'); saver.restore(sess, PREFIX)

Reports, from TensorFlow and numpy alone:
  * bn_layers: every BN scope of the checkpoint (keys ending in /moving_mean) with how far its
    moving statistics moved from their initial 0 / 1;
  * inference_path: the FusedBatchNormV3 ops that LOGITS_OP depends on (walking the GraphDef's
    inputs back from the logits to the placeholder): their is_training attribute and which
    variables feed their mean / variance inputs; whether a `training/` op is on that path;
  * max_bn_error: for one batch of digits, the largest difference between each inference BN's
    output as TensorFlow computes it and numpy's gamma * (x - moving_mean) /
    sqrt(moving_variance + eps) + beta with the checkpoint's variables and TF's BN input x;
  * max_batch_stat_gap: the same against the batch statistics (must be large: TF did not
    normalize with the batch);
  * logits_repeat_gap / logits_subbatch_gap: logits run twice, and the first 8 rows of a
    32-example batch against an 8-example batch (0 for the deterministic twin in inference);
  * kl_inputs / flipout_layers: inputs of the KL sum against the Flipout kernels;
  * after running the `train_op` collection once: global step and moving-mean change.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def ancestors(nodes, out):
    """Names of the nodes `out` depends on through data inputs (control inputs skipped)."""
    seen, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for i in nodes[n].input:
            if not i.startswith("^"):
                stack.append(i.split(":")[0])
    return seen


def main():
    prefix, digits, logits_op = sys.argv[1], sys.argv[2], sys.argv[3]
    reader = tf.train.load_checkpoint(prefix)
    keys = reader.get_variable_to_shape_map()
    bn_scopes = sorted(k[: -len("/moving_mean")] for k in keys if k.endswith("/moving_mean"))
    bn_layers = {}
    for s in bn_scopes:
        mm, mv = reader.get_tensor(s + "/moving_mean"), reader.get_tensor(s + "/moving_variance")
        bn_layers[s] = {"mean_moved": float(np.abs(mm).max()), "variance_moved": float(np.abs(mv - 1).max()), "channels": int(mm.shape[0])}

    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(prefix + ".meta")
        gd = graph.as_graph_def()
        nodes = {n.name: n for n in gd.node}
        path = ancestors(nodes, logits_op)
        fused = sorted(n for n in path if nodes[n].op == "FusedBatchNormV3")
        inference_path = []
        for n in fused:
            node = nodes[n]
            inference_path.append({
                "op": n,
                "is_training": bool(node.attr["is_training"].b),
                "epsilon": float(node.attr["epsilon"].f),
                "inputs": [i.split(":")[0] for i in node.input],
            })
        training_bn = [n.name for n in gd.node if n.op == "FusedBatchNormV3" and n.name.startswith("training/")]
        training_bn_modes = sorted({bool(nodes[n].attr["is_training"].b) for n in training_bn})
        placeholder_on_path = "Placeholder" in path
        training_on_path = sorted(n for n in path if n.startswith("training/"))
        kl = nodes.get("loss/kl")
        kl_inputs = [i.split(":")[0] for i in kl.input] if kl is not None else []
        flipout_layers = sorted(k[: -len("/kernel_posterior_loc")] for k in keys if k.endswith("/kernel_posterior_loc"))
        update_ops = list(graph.get_collection("update_ops"))
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, prefix)
            tvars = [v.op.name for v in tf.compat.v1.trainable_variables()]
            gvars = [v.op.name for v in tf.compat.v1.global_variables()]
            x = np.load(os.path.join(digits, "digits_test_x.npy")).reshape(-1, 8, 8, 1)[:32]
            y = np.load(os.path.join(digits, "digits_test_y.npy"))[:32]
            inp = graph.get_tensor_by_name("Placeholder:0")
            lab = graph.get_tensor_by_name("Placeholder_1:0")
            logits = graph.get_tensor_by_name(logits_op + ":0")
            max_err, max_gap = 0.0, 0.0
            for b in inference_path:
                src = nodes[b["op"]].input[0]
                t_in = graph.get_tensor_by_name(src if ":" in src else src + ":0")
                t_out = graph.get_tensor_by_name(b["op"] + ":0")
                xin, yout = sess.run([t_in, t_out], {inp: x})
                scope = b["op"].rsplit("/", 1)[0]
                g, be = reader.get_tensor(scope + "/gamma"), reader.get_tensor(scope + "/beta")
                mm, mv = reader.get_tensor(scope + "/moving_mean"), reader.get_tensor(scope + "/moving_variance")
                eps = b["epsilon"]
                want = g * (xin - mm) / np.sqrt(mv + eps) + be
                max_err = max(max_err, float(np.abs(yout - want).max() / max(1.0, np.abs(want).max())))
                bm, bv = xin.mean(axis=(0, 1, 2)), xin.var(axis=(0, 1, 2))
                batch = g * (xin - bm) / np.sqrt(bv + eps) + be
                max_gap = max(max_gap, float(np.abs(yout - batch).max() / max(1.0, np.abs(batch).max())))
            l1, l2 = sess.run(logits, {inp: x}), sess.run(logits, {inp: x})
            l8 = sess.run(logits, {inp: x[:8]})
            step = graph.get_tensor_by_name("global_step:0")
            before = int(sess.run(step))
            first_mm = graph.get_tensor_by_name(bn_scopes[0] + "/moving_mean:0")
            mm_before = sess.run(first_mm)
            train_op = tf.compat.v1.get_collection("train_op")[0]
            sess.run(train_op, {inp: x, lab: y})
            after = int(sess.run(step))
            mm_after = sess.run(first_mm)
    print(json.dumps({
        "bn_layers": bn_layers,
        "inference_path": inference_path,
        "placeholder_on_path": placeholder_on_path,
        "training_ops_on_path": training_on_path[:5],
        "training_bn_count": len(training_bn),
        "training_bn_modes": training_bn_modes,
        "trainable_variables": tvars,
        "global_variables": gvars,
        "update_ops": [o.name for o in update_ops],
        "max_bn_error": max_err,
        "max_batch_stat_gap": max_gap,
        "logits_repeat_gap": float(np.abs(l1 - l2).max()),
        "logits": l1.astype(float).tolist(),
        "logits_subbatch_gap": float(np.abs(l1[:8] - l8).max()),
        "kl_inputs": kl_inputs,
        "flipout_layers": flipout_layers,
        "step_before": before,
        "step_after_train_op": after,
        "moving_mean_change_by_train_op": float(np.abs(mm_after - mm_before).max()),
    }))


if __name__ == "__main__":
    main()
