"""Offline cross-encoder checkpoints with random weights, for tests and shape benchmarks.

Each checkpoint is a real Hugging Face folder: a seed model's config.json (exact shape, from
crossonnx/checkpoints/configs) or a tiny one of the same family, random weights saved as safetensors, and a
tokenizer trained here on STSb text in the family's format — WordPiece vocab.txt for BERT/ELECTRA, byte-level
BPE vocab.json + merges.txt for RoBERTa — loaded by transformers exactly as the seed repositories are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossonnx.architectures import TINY_CHECKPOINTS, architecture
from crossonnx.stsb import load_stsb

CONFIG_DIR = Path(__file__).with_name("configs")
TOKENIZER_VOCAB = 4000
# Export gates for these checkpoints (``export_model(gate_overrides=...)``): random weights give nearly tied scores,
# so rank agreement of fp16 and int8 means nothing there; they are gated on absolute error only (a real-weight
# model is gated on both)
RANDOM_WEIGHT_GATES = (
    "fp16:spearman=off", "int8:max_abs=0.05,spearman=off", "bf16:spearman=off", "int8-static:spearman=off",
    "int8-dynamic:spearman=off",
)

def seed_config(name: str) -> dict[str, Any]:
    """The config.json of a models.yaml entry (architecture fields exact; see its _crossonnx_evidence)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise KeyError(f"no config for {name!r}; known: {known}")
    config = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in config.items() if not key.startswith("_crossonnx")}


def _texts() -> list[str]:
    rows = load_stsb("train")
    return [row.sentence1 for row in rows] + [row.sentence2 for row in rows]


def write_tokenizer(folder: Path, model_type: str, vocab_size: int = TOKENIZER_VOCAB) -> None:
    """Train a tokenizer of the family's kind on STSb train and write it in the seed repositories' file format."""
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer

    kind = architecture(model_type).tokenizer
    if kind not in ("wordpiece", "bpe"):
        raise ValueError(f"no synthetic tokenizer for {model_type!r} ({kind}); this builder trains wordpiece or bpe")
    if kind == "bpe":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            _texts(), vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        )
        bpe.save_model(str(folder))  # vocab.json, merges.txt
        tokenizer_config = {"model_max_length": 512}
    else:
        wordpiece = BertWordPieceTokenizer(lowercase=True)
        wordpiece.train_from_iterator(
            _texts(), vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        )
        wordpiece.save_model(str(folder))  # vocab.txt
        tokenizer_config = {"do_lower_case": True, "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")


def _spread_head(model: Any) -> None:
    """Re-draw pooler and classifier weights with std 1/sqrt(fan_in).

    With the config's initializer_range (0.02) every pair scores about 0.5 and rank correlations between
    precisions mean nothing; unit-scale head weights spread the scores the way a trained head does.
    """
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ("classifier" in name or "pooler" in name):
            torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)
            torch.nn.init.zeros_(module.bias)


def build_checkpoint(out: str | Path, config: dict[str, Any], seed: int = 0) -> Path:
    """Random-weight sequence classifier with ``config`` and a trained tokenizer, saved at ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    config.setdefault("num_labels", len(config.get("id2label", {})) or 1)
    hf_config = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(hf_config)
    _spread_head(model)
    model.eval()
    model.save_pretrained(out)  # safetensors
    write_tokenizer(out, hf_config.model_type)
    return out


def build_seed_shape(name: str, out: str | Path, seed: int = 0) -> Path:
    """A checkpoint with the exact shape of models.yaml entry ``name`` (random weights)."""
    return build_checkpoint(out, seed_config(name), seed=seed)


def build_tiny(family: str, out: str | Path, seed: int = 0, num_labels: int = 1) -> Path:
    """A few-hundred-kB checkpoint of ``family`` (a name in crossonnx.architectures.TINY_CHECKPOINTS)."""
    try:
        tiny = TINY_CHECKPOINTS[family]
    except KeyError:
        raise KeyError(f"unknown family {family!r}; use one of {', '.join(TINY_CHECKPOINTS)}") from None
    config = {**seed_config(tiny.seed_config), **tiny.overrides, "vocab_size": TOKENIZER_VOCAB}
    if num_labels != 1:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return build_checkpoint(out, config, seed=seed)
