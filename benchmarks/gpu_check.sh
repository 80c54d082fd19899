#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, torch with CUDA, sentence-transformers and onnx already there.
# It installs onnxruntime-gpu from a wheel beside the repo (no network needed), then runs gpu_check.py.
#   ORT_GPU_WHEEL=path/to/onnxruntime_gpu-*.whl bash benchmarks/gpu_check.sh [--quick]
# A wheel carried in parts (split -b 60M) is reassembled first: ORT_GPU_PARTS=.cache/ort-gpu/part- (prefix).
# Results: benchmarks/results/gpu_check.{json,md} (and $OUT when set). Budget: about 8 minutes on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ -n "${ORT_GPU_PARTS:-}" ]]; then
  name=$(cat "${ORT_GPU_PARTS}name")
  cat "${ORT_GPU_PARTS}"[0-9]* > "/tmp/$name"
  ORT_GPU_WHEEL="/tmp/$name"
fi
if [[ -n "${ORT_GPU_WHEEL:-}" ]]; then
  "$PYTHON" -m pip uninstall -q -y onnxruntime || true
  "$PYTHON" -m pip install -q --no-deps "$ORT_GPU_WHEEL"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
"$PYTHON" -m pytest tests/test_providers.py -q -m gpu -p no:cacheprovider || true
"$PYTHON" benchmarks/gpu_check.py "$@"
if [[ -n "${OUT:-}" ]]; then cp benchmarks/results/gpu_check.* "$OUT"/; fi
