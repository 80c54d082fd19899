"""The export: checkpoint -> validated model folder, written to a temporary folder and renamed at the end."""

from __future__ import annotations

import datetime as dt
import glob
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

from crossonnx.batching import plan_batches
from crossonnx.errors import ExportError, ValidationError
from crossonnx.exporter.convert import (
    export_plain_graph,
    exported_input_names,
    graph_input_names,
    load_checkpoint,
    quiet_libraries,
)
from crossonnx.exporter.memory import release_memory
from crossonnx.exporter.optimize import fuse, to_mixed_fp16
from crossonnx.exporter.quantize import quantize_int8
from crossonnx.exporter.reference import REFERENCE_NAME, reference_scores
from crossonnx.exporter.source import resolve_source
from crossonnx.exporter.validate import default_gates, parse_gate_overrides, validate_precision
from crossonnx.exporter.validation_pairs import calibration_pairs, validation_pairs
from crossonnx.manifest import UNFUSED_GRAPH, Manifest, PrecisionEntry, TokenizerSpec, sha256_file
from crossonnx.tokenization import PairTokenizer

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 17
FILES = {
    "fp32": "model_fp32.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8.onnx",
    UNFUSED_GRAPH: "model_fp32_unfused.onnx",
}
VERSIONED = (
    "crossonnx", "torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers", "numpy"
)


def library_versions() -> dict[str, str]:
    """Versions of everything that shaped an export, for the manifest."""
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class StepLog:
    """Numbered progress lines with elapsed seconds, on stderr by default."""

    def __init__(self, total: int, sink: Callable[[str], None] | None):
        self.total, self.index, self.sink = total, 0, sink
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.index += 1
        if self.sink is not None:
            elapsed = time.perf_counter() - self.started
            self.sink(f"[{self.index}/{self.total} {elapsed:6.1f}s] {message}")

    def note(self, message: str) -> None:
        if self.sink is not None:
            self.sink(f"           {message}")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _normalize_precisions(precisions: Iterable[str] | str) -> list[str]:
    if isinstance(precisions, str):
        precisions = [p for p in precisions.split(",") if p.strip()]
    wanted = [p.strip().lower() for p in precisions]
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown or not wanted:
        raise ExportError(f"unknown precision(s) {unknown or wanted}; choose from {', '.join(PRECISIONS)}")
    return [p for p in PRECISIONS if p in wanted]


def calibration_feeds(
    tokenizer_file: Path, spec: TokenizerSpec, max_length: int, names: list[str], batch: int = 16
) -> list[dict]:
    """Model inputs for the int8 calibration pairs, length-sorted batches of ``batch``."""
    tokenizer = PairTokenizer(tokenizer_file, spec, max_length, names)
    encoded = tokenizer.encode(calibration_pairs())
    return [tokenizer.batch(encoded, rows) for rows in plan_batches(encoded.lengths, batch)]


HALF_DTYPES = ("float16", "bfloat16")


def stored_dtype(config: object) -> str:
    """The dtype the checkpoint's weights are stored in, from its config ('float32' when it does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an existing folder is swapped out only after the move succeeded."""
    if not out.exists():
        os.rename(tmp, out)
        return
    backup = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, backup)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


PARTIAL_STALE_UNOWNED_S = 24 * 3600  # a partial folder that names no process is stale once untouched this long


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told, e.g. on Windows)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _partial_folder(out_dir: Path, note: Callable[[str], None]) -> Path:
    """A new ``.NAME.partial-PID@HOST-XXXX`` folder beside ``out_dir``, after removing stale ones of the same target:
    those of a process of this host that no longer runs (an export killed half-way), and those from before the
    folder named its process that nobody touched for a day. Folders of running exports, or of other hosts, stay."""
    host = platform.node().replace("/", "_") or "localhost"
    pattern = re.compile(re.escape(f".{out_dir.name}.partial-") + r"(?:(\d+)@(.+)-)?[^/]+")
    for path in sorted(out_dir.parent.glob(f".{glob.escape(out_dir.name)}.partial-*")):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        pid, owner = match.group(1), match.group(2)
        if pid is not None:
            if owner != host or _pid_alive(int(pid)):
                continue
            why = f"its export (process {pid}) no longer runs"
        else:
            idle = time.time() - path.stat().st_mtime
            if idle < PARTIAL_STALE_UNOWNED_S:
                continue
            why = f"it names no process and was last changed {idle / 3600:.0f} h ago"
        shutil.rmtree(path, ignore_errors=True)
        note(f"removed stale {path}: {why}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}@{host}-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the finished folder gets normal permissions
    return tmp


def export_model(
    source: str,
    out: str | Path | None = None,
    precisions: Iterable[str] | str = PRECISIONS,
    max_length: int | None = None,
    opset: int = DEFAULT_OPSET,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    gate_overrides: Sequence[str] = (),
    overwrite: bool = False,
    tensorrt: bool = False,
    log: Callable[[str], None] | None = _stderr,
) -> Path:
    """Export ``source`` to ``out`` and validate every precision against sentence-transformers.

    Nothing is written at ``out`` unless every requested precision passes its gate. ``gate_overrides`` take
    the CLI's form, e.g. ``["int8:max_abs=0.05,spearman=0.99"]``. ``tensorrt`` also keeps the graph before
    ONNX Runtime's CPU fusions (``fp32-unfused``), which TensorRT builds its fp32/fp16 engines from.
    """
    wanted = _normalize_precisions(precisions) + ([UNFUSED_GRAPH] if tensorrt else [])
    if max_length is not None and (not isinstance(max_length, int) or max_length < 3):
        raise ExportError(f"--max-length must be an integer >= 3, got {max_length!r}")
    if not 14 <= int(opset) <= 21:
        raise ExportError(f"--opset must be between 14 and 21, got {opset}")
    parse_gate_overrides(list(gate_overrides), default_gates("sigmoid"))  # reject a malformed gate up front
    steps = StepLog(6 + len(wanted) + ("fp16" in wanted) + ("int8" in wanted), log)
    quiet_libraries()

    steps(f"resolving {source}")
    resolved = resolve_source(source, revision=revision, allow_pickle=allow_pickle)
    out_dir = Path(out) if out is not None else Path("models") / resolved.name
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it, or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_folder(out_dir, steps.note)
    try:
        steps(f"loading {resolved.path} (PyTorch)")
        checkpoint = load_checkpoint(resolved.path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        names = graph_input_names(checkpoint)
        weights_dtype = stored_dtype(checkpoint.config)
        if weights_dtype in HALF_DTYPES:
            steps.note(f"weights stored as {weights_dtype}: validated against PyTorch fp32 math on them "
                       "(sentence-transformers' default runs such a checkpoint in half precision on the CPU, "
                       "~1e-5 away)")

        steps("scoring validation pairs with sentence-transformers (PyTorch fp32)")
        reference = reference_scores(
            resolved.path, validation_pairs(), max_length, checkpoint.max_tokens, trust_remote_code
        )
        steps.note(f"max_length {reference.max_length}, activation {reference.activation}, inputs {names}")

        steps(f"exporting the ONNX graph (opset {opset})")
        plain = tmp / "model_plain.onnx"
        pruned = export_plain_graph(checkpoint, names, plain, opset)
        graph_inputs = exported_input_names(plain)  # the tokenizer's names in order, less any the model ignores
        if graph_inputs != names:
            ignored = [name for name in names if name not in graph_inputs]
            steps.note(f"the model ignores {ignored}: the graph and the runtime leave them out")
            names = graph_inputs
        steps.note("last layer computes the [CLS] position only" if pruned else "full graph (no [CLS]-only head)")
        del checkpoint.model  # free memory before the graph passes
        release_memory()

        steps("fusing transformer operators")
        details = {"fp32": fuse(plain, tmp / FILES["fp32"], checkpoint.config)}
        release_memory()
        for variant in details.values():
            variant["cls_only_last_layer"] = pruned
        steps.note(str(details["fp32"].get("fused_operators", details["fp32"]["graph"])))
        if "fp16" in wanted:
            steps("converting to mixed fp16")
            details["fp16"] = {**to_mixed_fp16(tmp / FILES["fp32"], tmp / FILES["fp16"]), "cls_only_last_layer": pruned}
            release_memory()
        tokenizer = checkpoint.tokenizer
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        tokenizer_spec = TokenizerSpec(
            file="tokenizer.json",
            sha256=sha256_file(tmp / "tokenizer.json"),
            pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            pad_token=str(tokenizer.pad_token),
            pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            padding_side=str(tokenizer.padding_side),
            truncation_side=str(tokenizer.truncation_side),
        )
        if "int8" in wanted:
            steps("quantizing to int8 (measuring which MatMuls int8 hurts)")
            feeds = calibration_feeds(tmp / "tokenizer.json", tokenizer_spec, reference.max_length, names)
            details["int8"] = quantize_int8(plain, tmp / FILES["int8"], feeds=feeds, log=steps.note)
            details["int8"]["cls_only_last_layer"] = pruned
            release_memory()
        if tensorrt:
            plain.rename(tmp / FILES[UNFUSED_GRAPH])
            details[UNFUSED_GRAPH] = {"graph": "unfused (for TensorRT)", "cls_only_last_layer": pruned}
        else:
            plain.unlink()
        if "fp32" not in wanted:
            (tmp / FILES["fp32"]).unlink()

        reference.write(tmp, torch_version=metadata.version("torch"))
        config = checkpoint.config
        manifest = Manifest(
            source=resolved.as_dict(),
            architecture={
                "model_type": config.model_type,
                "architectures": list(getattr(config, "architectures", None) or []),
                "num_hidden_layers": int(config.num_hidden_layers),
                "hidden_size": int(config.hidden_size),
                "num_attention_heads": int(config.num_attention_heads),
                "intermediate_size": int(getattr(config, "intermediate_size", 0)),
                "vocab_size": int(config.vocab_size),
                "max_position_embeddings": int(config.max_position_embeddings),
                "max_tokens": checkpoint.max_tokens,
                "stored_dtype": weights_dtype,
            },
            num_labels=reference.num_labels,
            activation=reference.activation,
            max_length=reference.max_length,
            inputs=names,
            output="logits",
            tokenizer=tokenizer_spec,
            precisions={
                p: PrecisionEntry(
                    file=FILES[p],
                    sha256=sha256_file(tmp / FILES[p]),
                    bytes=(tmp / FILES[p]).stat().st_size,
                    details=details[p],
                )
                for p in wanted
            },
            reference={"file": REFERENCE_NAME, "pairs": len(reference.pairs)},
            versions=library_versions(),
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        manifest.write(tmp)  # provisional: the runtime needs it to validate

        gates = parse_gate_overrides(list(gate_overrides), default_gates(reference.activation))
        failures = []
        parities = {}
        for precision in wanted:
            steps(f"validating {precision} against PyTorch")
            parity = validate_precision(tmp, precision, reference, gates[precision])
            parities[precision] = parity
            ungated = gates[precision].min_spearman is not None and not parity["spearman_gated"]
            steps.note(
                f"max abs diff {parity['max_abs_diff']:.3g}, Spearman {parity['spearman']:.6f}"
                + (f" (not gated: reference scores nearly tied, logit std {parity['reference_logit_std']:.2g})"
                   if ungated else "")
                + ("" if parity["passed"] else "  FAILED: " + "; ".join(parity["failures"]))
            )
            if not parity["passed"]:
                failures.append(f"{precision}: " + "; ".join(parity["failures"]))
        if failures:
            raise ValidationError(
                "validation failed, nothing was written: "
                + " | ".join(failures)
                + ". Loosen a gate only if you accept that error (--gate int8:max_abs=...,spearman=...)."
            )
        final = Manifest(
            **{
                **manifest.__dict__,
                "precisions": {
                    p: PrecisionEntry(**{**entry.__dict__, "parity": parities[p]})
                    for p, entry in manifest.precisions.items()
                },
            }
        )
        final.write(tmp)
        steps(f"writing {out_dir}")
        _replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
