"""Reference scores from sentence-transformers' CrossEncoder on the same checkpoint (PyTorch, fp32, CPU)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossonnx.errors import ExportError
from crossonnx.scoring import ACTIVATION_FNS, activation_name_from_path

REFERENCE_NAME = "reference.json"


@dataclass
class Reference:
    """What sentence-transformers gives for the validation pairs, and the settings it used."""

    pairs: list[tuple[str, str]]
    scores: np.ndarray  # predict() with the model's own activation
    logits: np.ndarray  # (n, num_labels), no activation
    input_ids: list[list[int]]  # what sentence-transformers fed the model, unpadded
    token_type_ids: list[list[int]] | None
    activation: str
    max_length: int
    num_labels: int

    def write(self, folder: Path, torch_version: str) -> None:
        """Pairs and PyTorch scores, so that `crossonnx verify` can re-check the folder later without torch."""
        payload = {
            "about": "sentence-transformers CrossEncoder scores (PyTorch fp32, CPU) for these pairs",
            "torch": torch_version,
            "activation": self.activation,
            "max_length": self.max_length,
            "pairs": [list(pair) for pair in self.pairs],
            "scores": self.scores.tolist(),
            "logits": self.logits.tolist(),
        }
        (folder / REFERENCE_NAME).write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")


def _activation_name(model: object) -> str:
    from sentence_transformers.util import fullname

    path = fullname(model.activation_fn)
    name = activation_name_from_path(path)
    if name is None:
        raise ExportError(
            f"the model's activation {path} is not one the runtime implements ({', '.join(ACTIVATION_FNS)})"
        )
    return name


def reference_scores(
    path: Path,
    pairs: list[tuple[str, str]],
    max_length: int | None,
    max_tokens: int,
    trust_remote_code: bool = False,
) -> Reference:
    """Score ``pairs`` with sentence-transformers exactly as a user would."""
    import torch
    from sentence_transformers import CrossEncoder

    # fp32 math on the checkpoint's exact weights, also for fp16/bf16-stored checkpoints (which
    # sentence-transformers would otherwise run in half precision on the CPU)
    fp32 = {"dtype": torch.float32}
    model = CrossEncoder(
        str(path), device="cpu", max_length=max_length, trust_remote_code=trust_remote_code, local_files_only=True,
        model_kwargs=fp32,
    )
    st_max = int(model.max_seq_length)
    if st_max > max_tokens:
        if max_length is not None:
            raise ExportError(f"--max-length {max_length} exceeds the {max_tokens} tokens this model can hold")
        # sentence-transformers would index past the position table on long input; use what the model holds
        model = CrossEncoder(
            str(path), device="cpu", max_length=max_tokens, trust_remote_code=trust_remote_code, local_files_only=True,
            model_kwargs=fp32,
        )
        st_max = max_tokens
    activation = _activation_name(model)
    # one forward pass: the logits, then the model's activation on them, as predict() applies it per batch (an
    # elementwise function: the same values; a second predict() would double the export's slowest PyTorch step)
    raw = model.predict(pairs, batch_size=16, show_progress_bar=False, activation_fn=torch.nn.Identity(),
                        convert_to_tensor=True)
    logits = np.asarray(raw, dtype=np.float32).reshape(len(pairs), -1)
    with torch.inference_mode():
        scores = np.asarray(model.activation_fn(raw), dtype=np.float32)
    features = model[0].preprocess(pairs)
    mask = features["attention_mask"].bool()
    ids = [row[m].tolist() for row, m in zip(features["input_ids"], mask, strict=True)]
    types = None
    if "token_type_ids" in features:
        types = [row[m].tolist() for row, m in zip(features["token_type_ids"], mask, strict=True)]
    return Reference(
        pairs=pairs,
        scores=scores,
        logits=logits,
        input_ids=ids,
        token_type_ids=types,
        activation=activation,
        max_length=st_max,
        num_labels=int(model.num_labels),
    )
