"""Validation of an exported folder against the sentence-transformers reference: tokens first, then scores."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from crossonnx.encoder import CrossEncoder
from crossonnx.engines import validation_provider
from crossonnx.errors import ExportError, ValidationError
from crossonnx.exporter.reference import Reference
from crossonnx.manifest import LeftOut, Miss, load_manifest
from crossonnx.parity import Gate, Parity, score_parity
from crossonnx.precisions import DEFAULT_PRECISION, GRAPHS
from crossonnx.tokenization import PairTokenizer


def default_gates(activation: str) -> dict[str, Gate]:
    """Each graph's gate, from its row of the precision table (crossonnx/precisions.py), on the score's own scale:
    scores an activation bounds get tighter absolute limits than raw logits, which spread wider."""
    return {row.name: Gate(*row.gate.for_activation(activation)) for row in GRAPHS}


def parse_gate_overrides(specs: list[str], gates: dict[str, Gate]) -> dict[str, Gate]:
    """Apply CLI overrides like 'int8:max_abs=0.05,spearman=0.99' (or spearman=off) to ``gates``."""
    gates = dict(gates)
    for spec in specs:
        precision, _, body = spec.partition(":")
        if precision not in gates or not body:
            raise ExportError(f"bad gate {spec!r}; expected e.g. 'int8:max_abs=0.05,spearman=0.99'")
        fields = asdict(gates[precision])
        for item in body.split(","):
            key, _, value = item.partition("=")
            key = {"max_abs": "max_abs_diff", "spearman": "min_spearman"}.get(key.strip(), key.strip())
            if key not in fields:
                raise ExportError(f"bad gate field {item!r} in {spec!r}; use max_abs and spearman")
            if key == "min_spearman" and value.strip().lower() in {"off", "none"}:
                fields[key] = None
                continue
            try:
                fields[key] = float(value)
            except ValueError:
                raise ExportError(f"bad gate value {item!r} in {spec!r}; expected a number") from None
            low, high = (-1.0, 1.0) if key == "min_spearman" else (0.0, math.inf)
            if not low <= fields[key] <= high:
                raise ExportError(f"bad gate value {item!r} in {spec!r}; expected a number from {low:g} to {high:g}")
        gates[precision] = Gate(**fields)
    return gates


def _limit_above(value: float) -> float:
    """The smallest number of two significant digits above ``value`` (> 0): a max-abs limit that admits it."""
    limit = float(f"{value:.1e}")
    while limit <= value:
        limit = float(f"{limit + 10 ** (math.floor(math.log10(limit)) - 1):.1e}")
    return limit


def _limit_below(rho: float) -> float:
    """The largest number of four decimals not above ``rho``: a min-Spearman limit that admits it."""
    limit = math.floor(rho * 1e4) / 1e4
    up = round(limit + 1e-4, 4)
    return up if up <= rho else limit


def left_out(precision: str, parity: Parity) -> LeftOut:
    """A precision that missed its gate: each limit it missed and the ``--gate`` flag that admits it, checked
    against the gate's own rule (``Gate.failures``)."""
    gate = parity.gate
    if gate is None:
        raise ValueError(f"{precision}: a parity record without a gate cannot have missed it")
    measured = {"finite": parity.finite, "max_abs_diff": parity.max_abs_diff, "spearman": parity.spearman,
                "spearman_gated": parity.spearman_gated}
    if not parity.finite:
        return LeftOut(precision, (Miss("finite", False, True),), None, parity)
    misses, fields = [], []
    if Gate(gate.max_abs_diff).failures(measured):
        misses.append(Miss("max_abs_diff", parity.max_abs_diff, gate.max_abs_diff))
        fields.append(f"max_abs={_limit_above(parity.max_abs_diff):g}")
    if Gate(math.inf, gate.min_spearman).failures(measured):
        rho = parity.spearman
        misses.append(Miss("spearman", rho, gate.min_spearman))
        fields.append("spearman=off" if math.isnan(rho) else f"spearman={_limit_below(rho):g}")
    if not misses:
        raise ValueError(f"{precision} passed its gate: nothing to leave it out for")
    flag = f"--gate {precision}:{','.join(fields)}"
    admitted = parse_gate_overrides([flag.removeprefix("--gate ")], {precision: gate})[precision]
    if admitted.failures(measured):  # cannot happen: each limit was moved past what was measured
        raise AssertionError(f"{flag} does not admit {precision}: {admitted.failures(measured)}")
    return LeftOut(precision, tuple(misses), flag, parity)


def check_tokens(folder: Path, reference: Reference) -> None:
    """The runtime tokenizer must produce exactly the ids sentence-transformers fed PyTorch."""
    manifest = load_manifest(folder)
    spec = manifest.tokenizer
    tokenizer = PairTokenizer(folder / spec.file, spec, manifest.max_length, manifest.inputs)
    encoded = tokenizer.encode(reference.pairs)
    for index, expected in enumerate(reference.input_ids):
        start, length = int(encoded.starts[index]), int(encoded.lengths[index])
        got = encoded.ids[start : start + length].tolist()
        types_differ = (
            reference.token_type_ids is not None
            and encoded.type_ids is not None
            and encoded.type_ids[start : start + length].tolist() != reference.token_type_ids[index]
        )
        if got != expected or types_differ:
            raise ValidationError(
                f"tokenizer mismatch on validation pair {index} {reference.pairs[index]!r}: "
                f"runtime gives {len(got)} tokens, sentence-transformers {len(expected)}"
            )


def validate_precision(folder: Path, precision: str, reference: Reference, gate: Gate) -> Parity:
    """Score the reference pairs with the runtime; returns the parity record (raises nothing)."""
    encoder = CrossEncoder(folder, precision=precision, provider=validation_provider(precision))
    if precision == DEFAULT_PRECISION:  # the exact precision: tokens are checked once, with it
        check_tokens(folder, reference)
    return score_parity(encoder, reference.pairs, reference.scores, reference.logits, gate)
