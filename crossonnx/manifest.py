"""The model folder's manifest: the one contract between the exporter and the runtime.

The exporter writes ``crossonnx.json``; the runtime reads nothing else to know how to tokenize, which graph
inputs to feed, which activation to apply and which file holds each precision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossonnx.errors import ModelFolderError, PrecisionNotExportedError
from crossonnx.parity import Parity
from crossonnx.precisions import ROWS
from crossonnx.precisions import UNFUSED_GRAPH as UNFUSED_GRAPH  # re-exported: the manifest names it
from crossonnx.scoring import ACTIVATION_FNS

MANIFEST_NAME = "crossonnx.json"
# 2: precision entries may list extra_files (an OpenVINO IR's weights); 3: left_out names the precisions a default
# export built but left out because they missed their gates
SCHEMA_VERSION = 3
# Every precision an export can write, and what it is: the precision table's rows (crossonnx/precisions.py), which
# also say what runs each. An export with --tensorrt adds UNFUSED_GRAPH, the graph TensorRT builds its engines from.
PRECISIONS = {row.name: row.description for row in ROWS}
# The details key of an entry the export wrote without validating it, because validation needs what the exporting
# machine lacks (bf16 arithmetic): what it needs, why it was not validated, and the gate it must meet where it next
# runs. The runtime validates it there on first use (crossonnx/first_use.py). Older crossonnx versions read it as an
# entry without a parity record, which no level picks.
PENDING = "pending_validation"


@dataclass(frozen=True)
class TokenizerSpec:
    """How the runtime drives tokenizer.json so that it matches the Hugging Face tokenizer exactly."""

    file: str
    sha256: str
    pad_id: int
    pad_token: str
    pad_type_id: int = 0
    padding_side: str = "right"
    truncation_side: str = "right"


@dataclass(frozen=True)
class PrecisionEntry:
    """One exported ONNX file and what validation measured for it (None before validation)."""

    file: str
    sha256: str
    bytes: int
    parity: Parity | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # files the graph needs beside ``file`` (an OpenVINO IR's .bin): name -> {"sha256", "bytes"}
    extra_files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def pending(self) -> dict[str, Any] | None:
        """The pending-validation record (``PENDING``) of an entry the export could not validate, else None: an
        entry with a parity record was validated at export."""
        record = self.details.get(PENDING)
        return record if self.parity is None and isinstance(record, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "sha256": self.sha256, "bytes": self.bytes,
            "parity": self.parity.to_dict() if self.parity is not None else {}, "details": self.details,
            "extra_files": self.extra_files,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionEntry:
        return cls(**{**data, "parity": Parity.from_dict(data.get("parity") or {})})


@dataclass(frozen=True)
class Miss:
    """One limit of a gate that a precision missed: the metric (``max_abs_diff``, ``spearman`` or ``finite``), what
    validation measured and the gate's limit."""

    metric: str
    measured: float | bool
    gate: float | bool


@dataclass(frozen=True)
class LeftOut:
    """A precision an export without ``--precision`` left out of the folder: it missed its gate (``misses``; ``flag``
    is the ``--gate`` that admits it on a re-export, None where none does: scores not finite), or it was not built
    (``not_built`` says why: what this machine lacks, or the error its build raised)."""

    precision: str
    misses: tuple[Miss, ...]
    flag: str | None
    parity: Parity | None = None
    not_built: str | None = None

    def reason(self) -> str:
        """What it missed, and the flag that admits it; or why it was not built."""
        if self.not_built is not None:
            return f"not built: {self.not_built}"
        names = {"max_abs_diff": "max abs diff", "spearman": "Spearman"}
        missed = "; ".join(
            "scores contain NaN or inf" if miss.metric == "finite"
            else f"{names.get(miss.metric, miss.metric)} {miss.measured:.4g} misses its gate {miss.gate:g}"
            for miss in self.misses
        )
        return missed + (f"; re-export with {self.flag} to admit it" if self.flag else "; no gate admits it")

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision, "misses": [asdict(miss) for miss in self.misses], "flag": self.flag,
            "parity": self.parity.to_dict() if self.parity is not None else {},
            **({"not_built": self.not_built} if self.not_built is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeftOut:
        return cls(
            precision=data["precision"], misses=tuple(Miss(**miss) for miss in data["misses"]), flag=data["flag"],
            parity=Parity.from_dict(data.get("parity") or {}), not_built=data.get("not_built"),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to score pairs with an exported folder."""

    source: dict[str, Any]
    architecture: dict[str, Any]
    num_labels: int
    activation: str
    max_length: int
    inputs: list[str]
    output: str
    tokenizer: TokenizerSpec
    precisions: dict[str, PrecisionEntry]
    reference: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    left_out: tuple[LeftOut, ...] = ()  # built but not in the folder: not available, listed so the user knows why
    schema_version: int = SCHEMA_VERSION

    def entry(self, precision: str) -> PrecisionEntry:
        """The entry of ``precision``; a clear error listing what was exported otherwise (and, for a precision the
        export left out, what it missed and the flag that admits it)."""
        try:
            return self.precisions[precision]
        except KeyError:
            exported = ", ".join(sorted(self.precisions)) or "none"
            left = next((item for item in self.left_out if item.precision == precision), None)
            if left is not None:
                raise PrecisionNotExportedError(
                    f"precision {precision!r} is not in this folder (exported: {exported}): the export left it "
                    f"out, {left.reason()}"
                ) from None
            raise PrecisionNotExportedError(
                f"precision {precision!r} was not exported to this folder (exported: {exported}). "
                f"Export it with: crossonnx export <model> --precision {precision}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["precisions"] = {name: entry.to_dict() for name, entry in self.precisions.items()}
        out["left_out"] = [item.to_dict() for item in self.left_out]
        return out

    def write(self, folder: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        (Path(folder) / MANIFEST_NAME).write_text(text, encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["tokenizer"] = TokenizerSpec(**data["tokenizer"])
        data["precisions"] = {name: PrecisionEntry.from_dict(entry) for name, entry in data["precisions"].items()}
        data["left_out"] = tuple(LeftOut.from_dict(item) for item in data.get("left_out", ()))
        return cls(**data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fix_hint(folder: Path) -> str:
    return f"Export a model there with: crossonnx export <model name, Hub id or checkpoint folder> --out {folder}"


def load_manifest(folder: str | Path) -> Manifest:
    """Read and check a model folder's manifest; errors name the problem and ``crossonnx export`` as the fix."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder} does not exist. {_fix_hint(folder)}")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is a file, not a crossonnx model folder. {_fix_hint(folder)}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"{folder} is not a crossonnx model folder: {MANIFEST_NAME} is missing "
            f"(an export that did not finish, or a plain checkpoint?). {_fix_hint(folder)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is corrupt ({exc}). Re-export the folder. {_fix_hint(folder)}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is corrupt (not a JSON object). {_fix_hint(folder)}")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ModelFolderError(
            f"{path} has schema version {version}, newer than this crossonnx understands ({SCHEMA_VERSION}). "
            "Upgrade crossonnx: pip install -U crossonnx"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ModelFolderError(f"{path} is incomplete or corrupt ({exc!r}). {_fix_hint(folder)}") from None
    if manifest.activation not in ACTIVATION_FNS:
        raise ModelFolderError(f"{path} names an unknown activation {manifest.activation!r}. {_fix_hint(folder)}")
    if not (folder / manifest.tokenizer.file).is_file():
        raise ModelFolderError(f"{folder} is incomplete: {manifest.tokenizer.file} is missing. {_fix_hint(folder)}")
    return manifest


def file_record(path: Path) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a file, as the manifest stores it."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _check_one(folder: Path, name: str, sha256: str, size: int, verify_checksum: bool) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise ModelFolderError(f"{folder} is incomplete: {name} is missing. {_fix_hint(Path(folder))}")
    found = path.stat().st_size
    if found != size:
        raise ModelFolderError(
            f"{path} is corrupt: {found} bytes where the manifest says {size}. {_fix_hint(Path(folder))}"
        )
    if verify_checksum and sha256_file(path) != sha256:
        raise ModelFolderError(f"{path} is corrupt: its sha256 does not match the manifest. {_fix_hint(Path(folder))}")
    return path


def check_file(folder: Path, entry: PrecisionEntry, verify_checksum: bool = False) -> Path:
    """Path of an entry's graph after checking that it (and its extra files) are there, whole, and (optionally)
    unchanged."""
    for name, record in entry.extra_files.items():
        _check_one(folder, name, record["sha256"], int(record["bytes"]), verify_checksum)
    return _check_one(folder, entry.file, entry.sha256, entry.bytes, verify_checksum)
