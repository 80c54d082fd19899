"""Checkpoints crossonnx builds itself, offline (needs the `export` extra).

- synthetic: random-weight checkpoints of every seed model's exact shape, and tiny ones per family.
- stsb_minilm: the project's real reference cross-encoder (MiniLM-L6 weights fine-tuned on STSb train).
"""
