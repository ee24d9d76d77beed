#!/usr/bin/env bash
# Creates .venv with the Python packages that the interoperability tests and the fixture
# generator use (TensorFlow, TensorFlow Probability, numpy, scikit-learn), if it is missing.
# Idempotent: a second run only checks that the packages import.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
# onnxruntime checks that exported ONNX files load in a second runtime besides tract.
extra="onnxruntime==1.32.0 onnx==1.23.2"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import tensorflow, tensorflow_probability, tf_keras, sklearn, numpy, onnxruntime" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$root/fixtures/requirements.txt" $extra
"$venv/bin/python" -c "import tensorflow, tensorflow_probability, tf_keras, sklearn, numpy, onnxruntime"
