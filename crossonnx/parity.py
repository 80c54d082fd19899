"""Parity with PyTorch: the gate a precision must meet and the record of what validation measured.

Written by the exporter into each manifest entry (``"parity"``), read back by ``crossonnx verify``; numpy only,
so the runtime can apply the export's own rule without torch or the exporter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from crossonnx.metrics import compare

AGAINST = "sentence-transformers CrossEncoder, PyTorch fp32 CPU"
# Rank agreement means something only when the reference scores are apart: on nearly tied scores (a random or
# untrained head) their order is numerical noise, and a Spearman gate would fail an export whose scores match
# PyTorch to 1e-4. The spread of a trained cross-encoder's reference logits on the validation pairs is well above
# this floor, that of most random-weight checkpoints below it. Below it Spearman is recorded but not gated; the
# absolute difference always is (docs/design/validation-gates.md).
MIN_LOGIT_SPREAD = 0.1


@dataclass(frozen=True)
class Gate:
    """Limits one precision must meet against PyTorch fp32 scores."""

    max_abs_diff: float
    min_spearman: float | None = None

    def failures(self, measured: Mapping[str, Any]) -> list[str]:
        """What ``measured`` (``metrics.compare``'s figures plus ``spearman_gated``) misses; empty when it passes."""
        out = []
        if not measured["finite"]:
            out.append("scores contain NaN or inf")
        elif measured["max_abs_diff"] > self.max_abs_diff:
            out.append(f"max abs diff {measured['max_abs_diff']:.3g} > {self.max_abs_diff:g}")
        if self.min_spearman is not None and measured["spearman_gated"]:
            rho = measured["spearman"]
            if not (isinstance(rho, float) and not math.isnan(rho) and rho >= self.min_spearman):
                out.append(f"Spearman {rho:.5f} < {self.min_spearman:g}")
        return out


@dataclass(frozen=True)
class Parity:
    """One precision's scores against sentence-transformers' on the validation pairs, and the gate's verdict.

    Stored in the manifest as a JSON object with these field names (folders exported before
    ``reference_logit_std`` and ``spearman_gated`` existed load with the rank gate on).
    """

    n: int
    finite: bool
    max_abs_diff: float
    mean_abs_diff: float
    spearman: float
    max_abs_logit_diff: float | None = None
    reference_logit_std: float | None = None
    spearman_gated: bool = True
    gate: Gate | None = None
    passed: bool = False
    failures: tuple[str, ...] = field(default=())
    against: str = AGAINST

    @classmethod
    def measure(cls, scores: np.ndarray, logits: np.ndarray, reference_scores: np.ndarray,
                reference_logits: np.ndarray, gate: Gate) -> Parity:
        """Compare scores and logits with the reference, and apply ``gate``."""
        measured = compare(scores, reference_scores)
        measured["reference_logit_std"] = logit_spread(reference_logits)
        measured["spearman_gated"] = measured["reference_logit_std"] >= MIN_LOGIT_SPREAD
        failures = gate.failures(measured)
        return cls(
            **measured,
            max_abs_logit_diff=float(np.abs(np.asarray(logits) - reference_logits).max()),
            gate=gate,
            passed=not failures,
            failures=tuple(failures),
        )

    def summary(self) -> str:
        """One line for the export log: the figures, and why the rank was not gated or what failed."""
        ungated = self.gate is not None and self.gate.min_spearman is not None and not self.spearman_gated
        return (
            f"max abs diff {self.max_abs_diff:.3g}, Spearman {self.spearman:.6f}"
            + (f" (not gated: reference scores nearly tied, logit std {self.reference_logit_std:.2g})"
               if ungated else "")
            + ("" if self.passed else "  FAILED: " + "; ".join(self.failures))
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (key order as exports have always written it)."""
        out = asdict(self)
        out["gate"] = asdict(self.gate) if self.gate is not None else {}
        out["failures"] = list(self.failures)
        return {key: out[key] for key in _KEY_ORDER}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Parity | None:
        """The record of a manifest entry; None for an entry that has none (``{}``)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a parity record is a JSON object, got {type(data).__name__}")
        if not data:
            return None
        known = {key: data[key] for key in _KEY_ORDER if key in data}
        known["gate"] = Gate(**data["gate"]) if data.get("gate") else None
        known["failures"] = tuple(data.get("failures", ()))
        return cls(**known)


_KEY_ORDER = (
    "n", "finite", "max_abs_diff", "mean_abs_diff", "spearman", "max_abs_logit_diff", "reference_logit_std",
    "spearman_gated", "gate", "passed", "failures", "against",
)


def logit_spread(logits: np.ndarray) -> float:
    """Standard deviation of the reference logits over the pairs (smallest over labels)."""
    flat = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return float(flat.std(axis=0).min()) if len(flat) else 0.0

