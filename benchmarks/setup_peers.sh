#!/usr/bin/env bash
# The peers' environment for the throughput benchmark: sentence-transformers' backend="onnx" needs optimum-onnx,
# which pins transformers < 4.58, so it cannot live beside sentence-transformers 6 / transformers 5.
# sentence-transformers 5.7 is the last release that accepts transformers 4.x; fastembed goes here as well.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/peers-venv
[[ -x $venv/bin/python ]] || python3 -m venv $venv
$venv/bin/python -m pip install -q --upgrade pip
$venv/bin/python -m pip install -q "torch==2.13.0"
$venv/bin/python -m pip install -q "sentence-transformers==5.7.0" "optimum-onnx[onnxruntime]==0.1.0" "fastembed==0.9.1"
echo "$venv/bin/python"
