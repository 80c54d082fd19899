"""Re-check an exported folder without torch: checksums, then the stored PyTorch reference scores."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.encoder import CrossEncoder
from crossonnx.engines import validation_provider
from crossonnx.errors import ModelFolderError, ProviderUnavailableError
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
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if sha256_file(folder / manifest.tokenizer.file) != manifest.tokenizer.sha256:
        raise ModelFolderError(f"{folder / manifest.tokenizer.file} does not match its checksum; re-export")
    ref_path = folder / manifest.reference.get("file", "reference.json")
    if not ref_path.is_file():
        raise ModelFolderError(f"{folder} has no reference scores ({ref_path.name}); re-export to verify it")
    reference = json.loads(ref_path.read_text(encoding="utf-8"))
    pairs = [tuple(pair) for pair in reference["pairs"]]
    expected = np.asarray(reference["scores"], dtype=np.float32)
    results: dict[str, dict[str, Any]] = {}
    for precision in precisions or list(manifest.precisions):
        entry = manifest.entry(precision)
        check_file(folder, entry, verify_checksum=True)
        try:
            encoder = CrossEncoder(folder, precision=precision, provider=provider or validation_provider(precision))
        except ProviderUnavailableError as exc:
            if not skip_unavailable:
                raise
            results[precision] = {"skipped": str(exc)}
            continue
        measured = compare(np.asarray(encoder.predict(pairs, batch_size=16)), expected)
        recorded = entry.parity  # the export's own gate and rule: no rank gate where the reference was nearly tied
        gate = recorded.gate if recorded is not None else None
        measured["spearman_gated"] = recorded.spearman_gated if recorded is not None else True
        measured["passed"] = not gate.failures(measured) if gate is not None else measured["finite"]
        measured["provider"] = encoder.provider
        measured["gate"] = asdict(gate) if gate is not None else {}
        results[precision] = measured
    return results
