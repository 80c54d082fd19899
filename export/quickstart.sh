#!/usr/bin/env bash
# The main job, offline: set up, build the reference cross-encoder (MiniLM-L6 fine-tuned on STSb, cached),
# export it to validated ONNX (fp32, fp16, int8) and score example pairs with the torch-free runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash export/setup_env.sh
source .venv/bin/activate
export HF_HUB_OFFLINE=1
checkpoint=$(crossonnx build-reference)
if [[ ! -f models/stsb-minilm-l6/crossonnx.json ]]; then
  crossonnx export "$checkpoint" --out models/stsb-minilm-l6
fi
echo
echo "== scores (sigmoid, 0..1) from models/stsb-minilm-l6, int8, without PyTorch =="
crossonnx predict models/stsb-minilm-l6 --precision int8 \
  --pair "A man is playing a guitar." "A man plays the guitar." \
  --pair "A man is playing a guitar." "A woman is slicing an onion." \
  --pair "The cat sits on the mat." "A cat is sitting on a rug."
echo
echo "== rank =="
crossonnx rank models/stsb-minilm-l6 "A dog runs through the snow." \
  "A dog is running in the snow." "A puppy plays in a white field." "A man is cooking dinner." \
  "Snow covers the mountains."
