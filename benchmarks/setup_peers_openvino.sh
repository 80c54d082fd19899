#!/usr/bin/env bash
# The OpenVINO peers' environment for the throughput and accuracy benchmarks: sentence-transformers'
# own CPU path, CrossEncoder(..., backend="openvino") and export_static_quantized_openvino_model.
# sentence-transformers 6.2, optimum-intel[openvino] 2.2 (optimum 2.3, nncf) and transformers 5.5 share one
# environment: optimum-intel 2.2 accepts transformers >= 4.51, < 5.6.
# torch goes in first, as the CPU wheel (2.13.0+cpu; PyPI's torch is the CUDA build), and stays pinned in the
# second step (else the resolver upgrades it to a CUDA build); torchvision comes out again: 0.28 breaks
# `import transformers` against torch 2.13, and nothing here needs it. datasets: sentence-transformers'
# export_static_quantized_openvino_model loads its calibration sentences with it (here from a local folder).
# Prints the environment's python (the benchmarks' --peers-openvino-python default).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/peers-openvino-venv
[[ -x $venv/bin/python ]] || python3 -m venv $venv
pip=($venv/bin/python -m pip install -q)
"${pip[@]}" --upgrade pip
torch=${TORCH:-torch==2.13.0+cpu}  # the CPU wheel, as this machine's wheel folder has it
"${pip[@]}" "$torch"
"${pip[@]}" "$torch" "sentence-transformers==6.2.*" "optimum-intel[openvino]==2.2.*" "transformers>=5.5,<5.6" datasets
$venv/bin/python -m pip uninstall -q -y torchvision 2>/dev/null || true
$venv/bin/python -c "import torch, transformers, optimum.intel, sentence_transformers, openvino, nncf
assert torch.version.cuda is None, 'torch is a CUDA build; want the CPU wheel'" >&2
echo "$venv/bin/python"
