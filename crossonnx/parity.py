"""Parity with PyTorch: the gate a precision must meet and the record of what validation measured.

Written by the exporter into each manifest entry (``"parity"``), read back by ``crossonnx verify``; numpy only,
so the runtime can apply the export's own rule without torch or the exporter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from crossonnx.metrics import compare, rankdata, spearman

AGAINST = "sentence-transformers CrossEncoder, PyTorch fp32 CPU"
# Rank agreement means something only when the reference scores are apart: on nearly tied scores (a random or
# untrained head) their order is numerical noise, and a Spearman gate would fail an export whose scores match
# PyTorch to 1e-4. The spread of a trained cross-encoder's reference logits on the validation pairs is well above
# this floor, that of most random-weight checkpoints below it. Below it Spearman is recorded but not gated; the
# absolute difference always is (docs/design/validation-gates.md).
MIN_LOGIT_SPREAD = 0.1
# Two validation pairs are near-tied when their reference scores differ by at most this fraction of the reference
# scores' standard deviation (about 0.0015 on a trained sigmoid cross-encoder's 0..1 scores): an order no user can
# act on, which bf16's 8 significant bits may swap. ``separated_spearman`` forgives such swaps, and nothing else
# (docs/precisions.md, "How levels are decided").
NEAR_TIE = 0.005
# Pairs per model call when validating (at export and on first use alike)
VALIDATION_BATCH = 16


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
    # Spearman with near-tied reference pairs counted as ties (``separated_spearman``); recorded, not gated; None in
    # folders exported before it existed
    spearman_separated: float | None = None

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
            spearman_separated=separated_spearman(scores, reference_scores),
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


class Scorer(Protocol):
    """What validation needs of a ``CrossEncoder`` (this module imports no engine)."""

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = ...) -> np.ndarray: ...

    def scores_from_logits(self, logits: np.ndarray) -> np.ndarray: ...


def score_parity(scorer: Scorer, pairs: Sequence[tuple[str, str]], reference_scores: np.ndarray,
                 reference_logits: np.ndarray, gate: Gate) -> Parity:
    """Score the validation pairs with ``scorer`` and measure them against PyTorch's: the one rule of the export's
    validation (crossonnx/exporter/validate.py) and of the first-use validation (crossonnx/first_use.py)."""
    logits = scorer.logits(pairs, batch_size=VALIDATION_BATCH)
    return Parity.measure(scorer.scores_from_logits(logits), logits, reference_scores, reference_logits, gate)


_KEY_ORDER = (
    "n", "finite", "max_abs_diff", "mean_abs_diff", "spearman", "max_abs_logit_diff", "reference_logit_std",
    "spearman_gated", "gate", "passed", "failures", "against", "spearman_separated",
)


def logit_spread(logits: np.ndarray) -> float:
    """Standard deviation of the reference logits over the pairs (smallest over labels)."""
    flat = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return float(flat.std(axis=0).min()) if len(flat) else 0.0



def separated_spearman(scores: np.ndarray, reference: np.ndarray, near_tie: float = NEAR_TIE) -> float:
    """Spearman of ``scores`` against ``reference``, forgiving only the order of near-tied reference pairs.

    Sort the reference scores and cut them into groups wherever two neighbours differ by more than ``near_tie``
    times their standard deviation (a group: pairs chained by near-ties, exact ties included). Within each group the
    candidate's ranks are handed out again in the reference's order, and ties within a group (in either ranking) are
    no disagreement, so a precision that only reorders near-tied pairs scores 1.0. A group keeps the candidate's own
    set of ranks, so a member misplaced far from its group counts nearly in full: a swap of well-separated pairs
    lowers the figure as it lowers plain Spearman. Not below plain Spearman (tests/test_levels.py checks it on random
    data); equal to it where no pairs are near-tied. Scale-free (the cut follows the spread) and, like
    ``metrics.compare``, the worst over labels for scores of shape (n, labels). Pure: numpy only.
    """
    cand = np.asarray(scores, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.shape != ref.shape:
        raise ValueError(f"shape mismatch: {cand.shape} vs {ref.shape}")
    if len(ref) < 2:
        return float("nan")
    flat_c, flat_r = cand.reshape(len(cand), -1), ref.reshape(len(ref), -1)
    return min(_separated(flat_c[:, j], flat_r[:, j], near_tie) for j in range(flat_r.shape[1]))


def _separated(cand: np.ndarray, ref: np.ndarray, near_tie: float) -> float:
    if not (np.isfinite(cand).all() and np.isfinite(ref).all()):
        return float("nan")
    spread = float(ref.std())
    if spread == 0:  # every reference score equal: no order to agree with
        return spearman(cand, ref)
    order = np.lexsort((cand, ref))  # by reference; exact reference ties in the candidate's order
    starts = np.flatnonzero(np.r_[True, np.diff(ref[order]) > near_tie * spread])
    ends = np.r_[starts[1:], len(ref)]
    rank_c = rankdata(cand)
    rank_r = np.empty(len(ref), dtype=np.float64)
    rank_r[order] = np.arange(1, len(ref) + 1)
    for start, end in zip(starts, ends, strict=True):
        if end - start > 1:
            members = order[start:end]  # in the reference's order
            rank_c[members] = given = np.sort(rank_c[members])
            # pairs the candidate ties share their reference ranks too: within a group, ties are no disagreement
            first = np.flatnonzero(np.r_[True, given[1:] != given[:-1]])
            rank_r[members] = np.repeat(np.add.reduceat(rank_r[members], first) / np.diff(np.r_[first, len(given)]),
                                        np.diff(np.r_[first, len(given)]))
    rank_r -= rank_r.mean()
    rank_c -= rank_c.mean()
    denom = float(np.sqrt((rank_r * rank_r).sum() * (rank_c * rank_c).sum()))
    if denom == 0:
        return float("nan")  # the candidate is constant where the reference is not
    return float((rank_r * rank_c).sum() / denom)
