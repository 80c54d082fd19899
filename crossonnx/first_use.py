"""First-use validation: a variant the export could not validate is validated where it next runs.

bf16 is the fused fp32 graph computed by OpenVINO in bf16, which only a CPU with bf16 arithmetic (AVX-512 BF16 or
AMX) computes: an export on a CPU without it cannot compare bf16's scores with PyTorch's. It writes the entry all the
same, with no parity record and a pending-validation record in its details (``manifest.PENDING``: what validation
needs, why the export could not do it, and the gate to meet, the export's own with any ``--gate`` override).

The first time a ``CrossEncoder`` loads such a precision on a machine that runs it, ``ensure_validated`` scores the
folder's ``reference.json`` pairs with the engine just loaded and applies the export's own rule
(``parity.score_parity``: same gate, same rule for when the rank is gated) to sentence-transformers' PyTorch fp32
scores stored there. The verdict is kept in the crossonnx cache (``validated/KEY.json``), keyed by the folder's
checksums (``tune.folder_identity``, as ``crossonnx tune`` keys its results), the reference's checksum, the precision,
provider and gate, and the CPU and library versions that run it (``tune.machine_identity``): a later load reads it
and scores nothing; a re-export, another CPU or an upgrade validates again. Passed: the precision loads as usual and
``info()["validated_here"]`` gives the figures. Failed: it is refused (``refusal``), on every load, naming what was
measured, the gate and what to use instead.

Where the machine cannot run it (bf16 on a CPU without bf16) nothing is validated: loading it raises
``ProviderUnavailableError`` saying the variant awaits validation (``awaiting``). Numpy only: no torch, no exporter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.errors import CrossOnnxError, ModelFolderError, ValidationError
from crossonnx.manifest import UNFUSED_GRAPH, Manifest, load_manifest, sha256_file
from crossonnx.parity import AGAINST, Gate, Parity, Scorer, score_parity
from crossonnx.paths import cache_root, write_json
from crossonnx.precisions import VALIDATION_NEEDS
from crossonnx.tune import folder_identity, machine_identity

logger = logging.getLogger("crossonnx")

VALIDATED_FOLDER = "validated"  # under the cache root
SCHEMA = 1
REFERENCE_FILE = "reference.json"  # where the manifest does not name it (the exporter's REFERENCE_NAME)


# --- the pending record ----------------------------------------------------------------------------------------


def pending_record(need: str, why: str, gate: Gate) -> dict[str, Any]:
    """What an export writes into the details of an entry it could not validate (``manifest.PENDING``)."""
    return {"needs": need, "where": VALIDATION_NEEDS[need], "why": why, "gate": asdict(gate), "against": AGAINST}


def pending_gate(record: Mapping[str, Any]) -> Gate:
    return Gate(**record["gate"])


def gate_text(gate: Gate) -> str:
    """``max abs diff <= 0.01, Spearman >= 0.9995``."""
    rank = f", Spearman >= {gate.min_spearman:g}" if gate.min_spearman is not None else ""
    return f"max abs diff <= {gate.max_abs_diff:g}{rank}"


def awaiting(precision: str, record: Mapping[str, Any]) -> str:
    """One sentence: what a pending precision waits for, and the gate it must meet."""
    return (f"{precision} awaits validation on {record['where']}: the export could not validate it "
            f"({record['why']}), so its first use on such a machine checks it against PyTorch "
            f"({gate_text(pending_gate(record))})")


# --- the stored reference --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredReference:
    """``reference.json``: the validation pairs and sentence-transformers' PyTorch fp32 scores and logits."""

    pairs: list[tuple[str, str]]
    scores: np.ndarray
    logits: np.ndarray  # (n, num_labels)
    sha256: str


def read_reference(folder: Path, manifest: Manifest) -> StoredReference:
    path = Path(folder) / manifest.reference.get("file", REFERENCE_FILE)
    if not path.is_file():
        raise ModelFolderError(f"{folder} has no reference scores ({path.name}); re-export it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pairs = [(str(a), str(b)) for a, b in data["pairs"]]
        scores = np.asarray(data["scores"], dtype=np.float32)
        logits = np.asarray(data["logits"], dtype=np.float32).reshape(len(pairs), -1)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"{path} is corrupt ({exc!r}); re-export the folder") from None
    return StoredReference(pairs, scores, logits, sha256_file(path))


# --- verdicts --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One first-use validation: which variant, what it measured against the gate, when, and its cache key."""

    precision: str
    provider: str
    parity: Parity
    measured: str  # UTC date and time
    model_dir: str  # where the folder was (the key does not depend on it)
    key: str
    identity: dict[str, Any]
    path: Path | None = field(default=None, compare=False)  # where it is stored

    @property
    def passed(self) -> bool:
        return self.parity.passed

    def describe(self) -> dict[str, Any]:
        """For ``CrossEncoder.info()``: validated on this machine, with the figures and the gate."""
        parity = self.parity
        return {
            "on_this_machine": True, "passed": parity.passed, "pairs": parity.n,
            "max_abs_diff": parity.max_abs_diff, "spearman": parity.spearman,
            "spearman_separated": parity.spearman_separated, "spearman_gated": parity.spearman_gated,
            "gate": asdict(parity.gate) if parity.gate is not None else {}, "failures": list(parity.failures),
            "against": parity.against, "measured": self.measured, "file": str(self.path) if self.path else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "precision": self.precision, "provider": self.provider,
                "parity": self.parity.to_dict(), "measured": self.measured, "model_dir": self.model_dir,
                "key": self.key, "identity": self.identity}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> Verdict:
        parity = Parity.from_dict(data["parity"])
        if parity is None:
            raise ValueError("a verdict without a parity record")
        return cls(precision=data["precision"], provider=data["provider"], parity=parity, measured=data["measured"],
                   model_dir=data["model_dir"], key=data["key"], identity=data["identity"], path=path)


def verdict_key(manifest: Manifest, precision: str, provider: str, reference_sha256: str) -> tuple[str, dict]:
    """(key, identity): the key is a hash of the identity, which the stored verdict also holds."""
    record = manifest.precisions[precision].pending
    identity = {"folder": folder_identity(manifest), "reference": reference_sha256, "precision": precision,
                "provider": provider, "gate": record["gate"] if record is not None else None, **machine_identity()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
    return digest[:24], identity


def verdict_path(key: str) -> Path:
    return cache_root() / VALIDATED_FOLDER / f"{key}.json"


def _load(key: str, identity: dict[str, Any]) -> Verdict | None:
    path = verdict_path(key)
    if not path.is_file():
        return None
    try:
        verdict = Verdict.from_dict(json.loads(path.read_text(encoding="utf-8")), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("crossonnx: ignoring the first-use verdict %s, which cannot be read (%s); validating again",
                       path, exc)
        return None
    # a hash collision, or a file copied under another name: not this folder, machine and versions
    return verdict if verdict.identity == json.loads(json.dumps(identity)) else None


def _store(verdict: Verdict) -> Path:
    """Write ``verdict`` under its key, whole or not at all."""
    return write_json(verdict_path(verdict.key), verdict.to_dict())


def load_verdict(folder: Path, manifest: Manifest, precision: str, provider: str) -> Verdict | None:
    """The stored verdict of ``precision`` on ``provider`` for this folder, machine and versions; None if none."""
    reference = read_reference(folder, manifest)
    return _load(*verdict_key(manifest, precision, provider, reference.sha256))


def ensure_validated(scorer: Scorer, folder: Path, manifest: Manifest, precision: str, provider: str) -> Verdict:
    """The verdict of pending ``precision`` run by ``scorer`` on ``provider``: the stored one, else measured now
    on the reference pairs under the pending gate and stored. Raises nothing for a failed verdict (``refusal``)."""
    record = manifest.precisions[precision].pending
    if record is None:
        raise ValueError(f"{precision} is not pending validation in {folder}")
    reference = read_reference(folder, manifest)
    key, identity = verdict_key(manifest, precision, provider, reference.sha256)
    found = _load(key, identity)
    if found is not None:
        return found
    logger.info("crossonnx: validating %s on %s against the stored PyTorch scores (first use on this machine)",
                precision, provider)
    parity = score_parity(scorer, reference.pairs, reference.scores, reference.logits, pending_gate(record))
    verdict = Verdict(precision, provider, parity, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      str(folder), key, identity)
    try:
        return replace(verdict, path=_store(verdict))
    except OSError as exc:  # a read-only cache: the verdict holds for this load, and the next one measures again
        logger.warning("crossonnx: could not keep the first-use verdict of %s (%s)", precision, exc)
        return verdict


def instead(manifest: Manifest, precision: str) -> str:
    """What to use instead of ``precision``: the folder's other validated precisions, or a level."""
    others = [p for p, entry in manifest.precisions.items() if p not in (precision, UNFUSED_GRAPH)
              and entry.pending is None]
    return (f"Use another precision of this folder ({', '.join(others) or 'none'}) or a level ('exact', "
            "'faithful', 'fast'), which picks what meets it here")


def refusal(verdict: Verdict, manifest: Manifest) -> ValidationError:
    """The error a failed verdict raises: what was measured against which gate, and what to use instead."""
    parity, precision = verdict.parity, verdict.precision
    record = manifest.precisions[precision].pending or {}
    gate = gate_text(parity.gate) if parity.gate is not None else "its gate"
    return ValidationError(
        f"precision {precision!r} failed its first-use validation on this machine ({verdict.provider}): "
        f"{'; '.join(parity.failures)} against sentence-transformers' PyTorch fp32 scores on the folder's "
        f"{parity.n} reference pairs (its gate: {gate}). The export could not validate it "
        f"({record.get('why', 'pending')}), and crossonnx does not run a variant that missed its gate. "
        f"{instead(manifest, precision)}. The verdict is kept in {verdict.path or 'memory only'}; a re-export, "
        "another CPU or an upgrade validates it again"
    )


def checker(model_dir: Path, threads: int) -> Callable[[str, str], Parity | None]:
    """For ``levels.resolve_level``: the first-use verdict of a pending (provider, precision) here, as a parity
    record: the stored one, else measured now by loading the variant (one compile, the reference pairs); None where
    it cannot be loaded here."""

    def check(provider: str, precision: str) -> Parity | None:
        from crossonnx.encoder import CrossEncoder  # the encoder imports this module

        manifest = load_manifest(model_dir)
        found = load_verdict(model_dir, manifest, precision, provider)
        if found is not None:
            return found.parity
        try:
            encoder = CrossEncoder(model_dir, precision=precision, provider=provider, threads=threads, workload=None)
        except ValidationError:  # failed: its verdict is stored (or, with a read-only cache, lost: not qualified)
            found = load_verdict(model_dir, manifest, precision, provider)
            return found.parity if found is not None else None
        except CrossOnnxError as exc:
            logger.info("crossonnx: %s on %s could not be validated here (%s)", precision, provider, exc)
            return None
        verdict = encoder.validated_here
        return verdict.parity if verdict is not None else None

    return check
