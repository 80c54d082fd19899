"""The accuracy report's int8 baseline as a model folder of its own: what crossonnx's int8 replaced.

ONNX Runtime dynamic int8 on every weight MatMul (per-channel, 7-bit weights), with no [CLS]-row split and no
MatMul kept in fp32, quantized from the unfused graph of an export made with ``tensorrt=True`` (``--tensorrt``).
The folder is an ordinary crossonnx model folder whose ``int8`` precision is that baseline: the runtime loads it
with ``CrossEncoder(folder, precision="int8")`` and ``crossonnx verify`` checks it like any export. Its manifest is
the source export's, with this one precision; its parity is measured on the export's reference pairs and
recorded, not gated (a baseline is kept to be compared, not shipped). What replaced it and why:
docs/design/ort-int8-plan.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx

from crossonnx.errors import ModelFolderError
from crossonnx.manifest import MANIFEST_NAME, UNFUSED_GRAPH, PrecisionEntry, load_manifest, sha256_file
from crossonnx.metrics import compare
from crossonnx.parity import Parity

FILE = "model_int8.onnx"
KIND = "plain dynamic int8 (baseline: every MatMul int8, no [CLS]-row split, no fp32 MatMuls)"


def plain_int8_folder(export_dir: Path, out: Path) -> Path:
    """Build (once) the baseline folder at ``out`` from ``export_dir``; returns ``out``."""
    from crossonnx.encoder import CrossEncoder
    from crossonnx.exporter.quantize import Int8Plan, weight_matmuls, write_int8

    export_dir, out = Path(export_dir), Path(out)
    if (out / MANIFEST_NAME).is_file() and load_manifest(out).entry("int8").details.get("baseline") == KIND:
        return out
    manifest = load_manifest(export_dir)
    if UNFUSED_GRAPH not in manifest.precisions:
        raise ModelFolderError(
            f"{export_dir} has no unfused graph ({UNFUSED_GRAPH}) to quantize the int8 baseline from; "
            "re-export it with: crossonnx export <model> --tensorrt"
        )
    unfused = export_dir / manifest.entry(UNFUSED_GRAPH).file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name in (manifest.tokenizer.file, manifest.reference.get("file", "reference.json")):
            shutil.copyfile(export_dir / name, tmp / name)
        plan = Int8Plan(first_position_fp32=False,
                        quantized_matmuls=len(weight_matmuls(onnx.load(str(unfused), load_external_data=False))))
        write_int8(unfused, tmp / FILE, plan)
        entry = PrecisionEntry(file=FILE, sha256=sha256_file(tmp / FILE), bytes=(tmp / FILE).stat().st_size,
                               details={**asdict(plan), "baseline": KIND})
        provisional = replace(manifest, precisions={"int8": entry})
        provisional.write(tmp)
        reference = json.loads((tmp / manifest.reference.get("file", "reference.json")).read_text(encoding="utf-8"))
        scores = CrossEncoder(tmp, precision="int8", provider="cpu").predict(
            [tuple(pair) for pair in reference["pairs"]], batch_size=16
        )
        measured = compare(np.asarray(scores), np.asarray(reference["scores"], dtype=np.float32))
        # recorded, not gated (gate None): a baseline is kept to be compared, not shipped
        parity = Parity(**measured, passed=measured["finite"])
        replace(provisional, precisions={"int8": replace(entry, parity=parity)}).write(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
