"""Re-check an exported folder without torch: checksums, then the stored PyTorch reference scores."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.encoder import CrossEncoder
from crossonnx.engines import validation_provider
from crossonnx.errors import ModelFolderError, ProviderUnavailableError, ValidationError
from crossonnx.first_use import awaiting, load_verdict, read_reference
from crossonnx.manifest import check_file, load_manifest, sha256_file
from crossonnx.metrics import compare


def verify_folder(
    folder: str | Path, precisions: list[str] | None = None, provider: str | None = None,
    skip_unavailable: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per precision: checksum ok, parity against the stored reference, and whether the export-time gate holds.

    ``provider`` defaults to the engine each precision was validated on at export (ONNX Runtime's CPU, OpenVINO
    for OpenVINO's own precisions). With ``skip_unavailable``, a precision whose engine is not installed here is
    reported as ``{"skipped": why}`` instead of raising (the CLI's default: a base install verifies what it runs).

    On a GPU provider the gate is the one recorded at export (measured on CPU); compare the figures, not the verdict.

    A precision the export left pending validation (bf16 exported on a CPU without bf16) is validated here where
    this machine runs it (its first-use validation, crossonnx/first_use.py; ``"pending": True`` in its result, a
    failed verdict reported as failed) and otherwise, with ``skip_unavailable``, skipped as pending.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if sha256_file(folder / manifest.tokenizer.file) != manifest.tokenizer.sha256:
        raise ModelFolderError(f"{folder / manifest.tokenizer.file} does not match its checksum; re-export")
    reference = read_reference(folder, manifest)
    pairs, expected = reference.pairs, reference.scores
    results: dict[str, dict[str, Any]] = {}
    for precision in precisions or list(manifest.precisions):
        entry = manifest.entry(precision)
        check_file(folder, entry, verify_checksum=True)
        on = provider or validation_provider(precision)
        try:
            encoder = CrossEncoder(folder, precision=precision, provider=on)
        except ProviderUnavailableError as exc:
            if not skip_unavailable:
                raise
            results[precision] = ({"skipped": f"pending, {awaiting(precision, entry.pending)}; this machine cannot "
                                              "run it", "pending": True}
                                  if entry.pending is not None else {"skipped": str(exc)})
            continue
        except ValidationError:
            verdict = load_verdict(folder, manifest, precision, on) if entry.pending is not None else None
            if verdict is None:
                raise
            parity = verdict.parity  # its first-use validation here failed: report what it measured
            results[precision] = {
                "n": parity.n, "finite": parity.finite, "max_abs_diff": parity.max_abs_diff,
                "mean_abs_diff": parity.mean_abs_diff, "spearman": parity.spearman,
                "spearman_gated": parity.spearman_gated, "passed": False, "provider": on,
                "gate": asdict(parity.gate) if parity.gate is not None else {}, "pending": True,
            }
            continue
        measured = compare(np.asarray(encoder.predict(pairs, batch_size=16)), expected)
        # the export's own gate and rule (no rank gate where the reference was nearly tied); for a pending entry,
        # those its first-use validation applied
        recorded = entry.parity if entry.pending is None else getattr(encoder.validated_here, "parity", None)
        gate = recorded.gate if recorded is not None else None
        measured["spearman_gated"] = recorded.spearman_gated if recorded is not None else True
        measured["passed"] = not gate.failures(measured) if gate is not None else measured["finite"]
        measured["provider"] = encoder.provider
        measured["gate"] = asdict(gate) if gate is not None else {}
        if entry.pending is not None:
            measured["pending"] = True
        results[precision] = measured
    return results
