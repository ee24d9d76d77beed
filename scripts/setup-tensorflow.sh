#!/usr/bin/env bash
# Makes the TensorFlow C library available to the `tensorflow` crate without its download
# step (which needs the internet): takes libtensorflow_cc.so.2 (it exports the whole C API,
# TF_AddGradients included) and libtensorflow_framework.so.2 from the `tensorflow-cpu` wheel
# in .venv, links them into .tf/lib under the names the linker looks for, and writes a
# pkg-config file, which tensorflow-sys checks before downloading anything.
#
# Idempotent. Prints (only) the two exports to use on stdout, so either of
#   eval "$(scripts/setup-tensorflow.sh)"
#   source scripts/setup-tensorflow.sh
# sets them (build: PKG_CONFIG_PATH; run: LD_LIBRARY_PATH; bnn-train also gets an rpath).
set -euo pipefail
_tf_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tf_venv="$_tf_root/.venv"
_tf_lib="$_tf_root/.tf/lib"

if ! [ -x "$_tf_venv/bin/python" ] || ! "$_tf_venv/bin/python" -c "import tensorflow" >/dev/null 2>&1; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >&2
  fi
  [ -x "$_tf_venv/bin/python" ] || python3 -m venv "$_tf_venv" >&2
  "$_tf_venv/bin/pip" install -q --upgrade pip >&2
  # tf_keras + TFP: the Python reference trainer (bench/train_tfp_keras.py) and the
  # interoperability tests (tf.train.load_checkpoint, import_meta_graph).
  "$_tf_venv/bin/pip" install -q tensorflow-cpu==2.21.0 tf_keras==2.21.0 tensorflow-probability==0.25.0 numpy >&2
fi

_tf_pkg=$("$_tf_venv/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("tensorflow")
print(os.path.dirname(spec.origin))
PY
)
for f in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
  [ -f "$_tf_pkg/$f" ] || { echo "setup-tensorflow: $_tf_pkg/$f not found in the tensorflow wheel" >&2; exit 1; }
done

mkdir -p "$_tf_lib/pkgconfig"
# Links, not copies: libtensorflow_cc.so.2 is over 1 GB.
ln -sfn "$_tf_pkg/libtensorflow_cc.so.2" "$_tf_lib/libtensorflow_cc.so.2"
ln -sfn "$_tf_pkg/libtensorflow_framework.so.2" "$_tf_lib/libtensorflow_framework.so.2"
ln -sfn libtensorflow_cc.so.2 "$_tf_lib/libtensorflow.so"
ln -sfn libtensorflow_cc.so.2 "$_tf_lib/libtensorflow.so.2"
ln -sfn libtensorflow_framework.so.2 "$_tf_lib/libtensorflow_framework.so"
_tf_version=$("$_tf_venv/bin/python" -c "import importlib.metadata as m; print(m.version('tensorflow-cpu') if any(d.metadata['Name']=='tensorflow-cpu' for d in m.distributions()) else m.version('tensorflow'))" 2>/dev/null || echo 2.21.0)
cat > "$_tf_lib/pkgconfig/tensorflow.pc" <<PC
prefix=$_tf_root/.tf
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: tensorflow
Description: TensorFlow C library (from the tensorflow-cpu wheel)
Version: $_tf_version
Libs: -L\${libdir} -ltensorflow -ltensorflow_framework
Cflags:
PC

export PKG_CONFIG_PATH="$_tf_lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$_tf_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "export PKG_CONFIG_PATH=$_tf_lib/pkgconfig"
echo "export LD_LIBRARY_PATH=$_tf_lib"
