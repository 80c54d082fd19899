"""The export: checkpoint -> validated model folder, written to a temporary folder and renamed at the end."""

from __future__ import annotations

import datetime as dt
import glob
import importlib.util
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from crossonnx.batching import plan_batches
from crossonnx.engines import OPENVINO_INSTALL, openvino_installed
from crossonnx.errors import ExportError, ValidationError, install_command
from crossonnx.exporter.convert import (
    LoadedCheckpoint,
    export_plain_graph,
    exported_input_names,
    graph_input_names,
    load_checkpoint,
    quiet_libraries,
)
from crossonnx.exporter.graph_files import remove_graph, save_self_contained
from crossonnx.exporter.memory import release_memory
from crossonnx.exporter.optimize import fuse, to_mixed_fp16
from crossonnx.exporter.quantize import quantize_int8
from crossonnx.exporter.reference import REFERENCE_NAME, Reference, reference_scores
from crossonnx.exporter.source import ResolvedSource, resolve_source
from crossonnx.exporter.validate import default_gates, left_out, parse_gate_overrides, validate_precision
from crossonnx.exporter.validation_pairs import calibration_pairs, validation_pairs
from crossonnx.first_use import awaiting, pending_record
from crossonnx.manifest import (
    PENDING,
    UNFUSED_GRAPH,
    LeftOut,
    Manifest,
    PrecisionEntry,
    TokenizerSpec,
    file_record,
    sha256_file,
)
from crossonnx.parity import Parity
from crossonnx.precisions import (
    DEFAULT_PRECISION,
    GRAPH_OF,
    GRAPHS,
    NEEDS_CPU_BF16,
    NEEDS_NNCF,
    NEEDS_OPENVINO,
    ROWS,
    VALIDATION_NEEDS,
    Precision,
)
from crossonnx.tokenization import PairTokenizer
from crossonnx.versions import library_versions

DEFAULT_OPSET = 17
PLAIN_GRAPH = "model_plain.onnx"
FUSED_APART = "model_fp32_apart.onnx"
TOKENIZER_FILE = "tokenizer.json"
VERSIONED = (
    "crossonnx", "torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers", "numpy"
)


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
    unknown = [p for p in wanted if p not in EXPORT_PRECISIONS]
    if unknown or not wanted:
        raise ExportError(f"unknown precision(s) {unknown or wanted}; choose from {', '.join(EXPORT_PRECISIONS)}")
    return [p for p in EXPORT_PRECISIONS if p in wanted]


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
    precisions: Iterable[str] | str | None = None,
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

    ``precisions`` defaults to every default precision of the table (crossonnx/precisions.py) this environment can
    build (``default_precisions``: OpenVINO's need OpenVINO, its int8s NNCF); of those the folder keeps the ones
    that pass their gates, and its manifest's ``left_out`` names the rest with what they missed and the ``--gate``
    that admits them. A precision whose validation needs what this machine lacks (bf16 on a CPU without bf16:
    ``validation_deferred``) is written pending validation, with the gate it must meet where it next runs
    (crossonnx/first_use.py). fp32 (and, with ``tensorrt``, the unfused graph) must pass, as must every precision
    named in ``precisions`` that can be validated here: otherwise nothing is written at ``out``.
    ``gate_overrides`` take the CLI's form, e.g. ``["int8:max_abs=0.05,spearman=0.99"]``. ``tensorrt`` also keeps
    the graph before ONNX Runtime's CPU fusions (``UNFUSED_GRAPH``), which TensorRT builds its engines from.
    """
    request = ExportRequest.check(
        precisions, max_length=max_length, opset=opset, gate_overrides=gate_overrides, tensorrt=tensorrt,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
    )
    steps = StepLog(request.step_count(), log)
    quiet_libraries()

    steps(f"resolving {source}")
    if precisions is None:
        default_precisions(steps.note)  # says which precisions this environment leaves out, and why
    resolved = resolve_source(
        source, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    out_dir = Path(out) if out is not None else Path("models") / resolved.name
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it, or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_folder(out_dir, steps.note)
    try:
        export = load(request, resolved, tmp, steps)
        score_reference(export)
        export_graph(export)
        save_tokenizer(export)
        build_precisions(export)
        manifest = provisional_manifest(export)
        manifest.write(tmp)  # provisional: the runtime needs it to validate
        parities = validate(export)
        leave_out = drop_failed(export, parities) + tuple(
            LeftOut(p, (), None, not_built=why) for p, why in export.not_built.items()
        ) + (unbuildable_defaults() if precisions is None else ())
        validated = {
            p: replace(entry, details={**entry.details, PENDING: export.pending[p]}) if p in export.pending
            else replace(entry, parity=parities[p])
            for p, entry in manifest.precisions.items() if p in export.pending or parities[p].passed
        }
        replace(manifest, precisions=validated, left_out=leave_out).write(tmp)
        steps(f"writing {out_dir}")
        _replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for item in leave_out:
        steps.note(f"{item.precision} left out: {item.reason()}")
    return out_dir


# ---------------------------------------------------------------------------------------------------- the export


@dataclass(frozen=True)
class ExportRequest:
    """The checked arguments of one export."""

    precisions: tuple[str, ...]  # what the export builds, in STAGES order (fp32-unfused too, with tensorrt)
    required: tuple[str, ...]  # those that must pass their gates; the folder leaves out the others that fail
    max_length: int | None
    opset: int
    gate_overrides: tuple[str, ...]
    trust_remote_code: bool
    allow_pickle: bool

    @classmethod
    def check(
        cls, precisions: Iterable[str] | str | None, *, max_length: int | None, opset: int,
        gate_overrides: Sequence[str], tensorrt: bool, trust_remote_code: bool, allow_pickle: bool,
    ) -> ExportRequest:
        """Reject bad arguments before anything is loaded."""
        wanted = _normalize_precisions(default_precisions() if precisions is None else precisions)
        for precision in wanted:
            problem = build_problem(precision)
            if problem is not None:
                raise ExportError(f"cannot export {precision}: {problem}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 3):
            raise ExportError(f"--max-length must be an integer >= 3, got {max_length!r}")
        if not 14 <= int(opset) <= 21:
            raise ExportError(f"--opset must be between 14 and 21, got {opset}")
        parse_gate_overrides(list(gate_overrides), default_gates("sigmoid"))  # reject a malformed gate up front
        built = tuple(wanted) + ((UNFUSED_GRAPH,) if tensorrt else ())
        # a named precision must pass (one validated where it next runs cannot fail here); without --precision,
        # only the exact graphs
        exact = (DEFAULT_PRECISION, UNFUSED_GRAPH)
        required = built if precisions is not None else tuple(p for p in built if p in exact)
        return cls(
            precisions=built,
            required=required,
            max_length=max_length,
            opset=int(opset),
            gate_overrides=tuple(gate_overrides),
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )

    def stages(self) -> list[PrecisionStage]:
        """The precision stages this export runs, in order."""
        return [stage for stage in STAGES if stage.always or stage.precision in self.precisions]

    def step_count(self) -> int:
        """Numbered steps: resolve, load, reference, graph, each stage with a step, each validation, write."""
        return 5 + sum(stage.step is not None for stage in self.stages()) + len(self.precisions)


@dataclass
class Export:
    """One export in progress: its request, the temporary folder, and what the stages have produced so far."""

    request: ExportRequest
    resolved: ResolvedSource
    tmp: Path
    steps: StepLog
    checkpoint: LoadedCheckpoint
    weights_dtype: str
    inputs: list[str]  # the graph's inputs: the tokenizer's, less any the model ignores (after export_graph)
    reference: Reference | None = None
    pruned: bool = False  # the last layer computes the [CLS] position only
    tokenizer: TokenizerSpec | None = None
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # per built precision, for the manifest
    not_built: dict[str, str] = field(default_factory=dict)  # precision -> why its build was given up
    # precision -> its pending-validation record (manifest.PENDING): built, but not validated here
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)

    def built(self) -> tuple[str, ...]:
        """The precisions of the request whose files were built (in the table's order)."""
        return tuple(p for p in self.request.precisions if p not in self.not_built)

    @property
    def plain(self) -> Path:
        """The traced, unfused fp32 graph the precision stages start from (removed once they ran)."""
        return self.tmp / PLAIN_GRAPH

    def file(self, precision: str) -> Path:
        return self.tmp / GRAPH_OF[precision].file

    @property
    def fused_apart(self) -> Path:
        """The fused fp32 graph with its weights in files beside it (removed once the stages ran): what the stages
        built from fp32 read, without copying its weights where the reader maps them."""
        return self.tmp / FUSED_APART

    def source(self, row: Precision) -> Path:
        """The graph ``row`` is built from: its ``built_from`` precision's file, else the plain graph."""
        if row.built_from == DEFAULT_PRECISION and self.fused_apart.is_file():
            return self.fused_apart
        return self.file(row.built_from) if row.built_from is not None else self.plain

    def scored(self) -> Reference:
        if self.reference is None:
            raise RuntimeError("the reference stage has not run")
        return self.reference

    def tokenizer_spec(self) -> TokenizerSpec:
        if self.tokenizer is None:
            raise RuntimeError("the tokenizer stage has not run")
        return self.tokenizer


def load(request: ExportRequest, resolved: ResolvedSource, tmp: Path, steps: StepLog) -> Export:
    """Load the checkpoint with PyTorch; the export's state from here on."""
    steps(f"loading {resolved.path} (config and tokenizer)")
    checkpoint = load_checkpoint(
        resolved.path, trust_remote_code=request.trust_remote_code, allow_pickle=request.allow_pickle,
        with_model=False,
    )
    peak_mb, seconds = export_cost(checkpoint.config)
    steps.note(f"expect about {peak_mb / 1024:.1f} GB of memory at the peak and {max(1, round(seconds / 60))} min "
               f"for every precision on 2 CPU cores (scaled from export/PARITY.md; fewer with --precision)")
    weights_dtype = stored_dtype(checkpoint.config)
    if weights_dtype in HALF_DTYPES:
        steps.note(f"weights stored as {weights_dtype}: validated against PyTorch fp32 math on them "
                   "(sentence-transformers' default runs such a checkpoint in half precision on the CPU, "
                   "~1e-5 away)")
    return Export(request, resolved, tmp, steps, checkpoint, weights_dtype, inputs=graph_input_names(checkpoint))


# What a full export costs, scaled from the seed shapes' measured exports (export/PARITY.md, 2-core AMD Zen 2): peak
# resident memory is the libraries' own (torch, ONNX Runtime, OpenVINO, NNCF) plus about two copies of the fp32
# weights (NNCF's SmoothQuant and its compiled statistics model hold the most); time grows with the parameters (every
# calibration and validation pass runs the model).
BASE_MB, PEAK_PER_FP32_MB, SECONDS_PER_MILLION_PARAMS = 1100, 1.9, 2.5


def parameter_count(config: Any) -> int:
    """Parameters of an encoder cross-encoder with ``config``'s shape (embeddings, layers, pooler and head)."""
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    inner = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    rows = int(config.vocab_size) + int(getattr(config, "max_position_embeddings", 512)) + int(
        getattr(config, "type_vocab_size", 1) or 1)
    layer = 4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner
    return rows * hidden + layers * layer + hidden * hidden + 2 * hidden


def export_cost(config: Any) -> tuple[float, float]:
    """Rough peak memory (MB) and time (s) of an export of every precision of a model of ``config``'s shape."""
    params = parameter_count(config)
    return BASE_MB + PEAK_PER_FP32_MB * params * 4 / 2**20, SECONDS_PER_MILLION_PARAMS * params / 1e6


def score_reference(export: Export) -> None:
    """sentence-transformers' scores for the validation pairs: what every precision is validated against."""
    export.steps("scoring validation pairs with sentence-transformers (PyTorch fp32)")
    export.reference = reference_scores(
        export.resolved.path, validation_pairs(), export.request.max_length, export.checkpoint.max_tokens,
        export.request.trust_remote_code,
    )
    release_memory()  # sentence-transformers' copy of the weights, before the exporter loads its own
    reference = export.reference
    export.steps.note(f"max_length {reference.max_length}, activation {reference.activation}, inputs {export.inputs}")


def export_graph(export: Export) -> None:
    """Load the PyTorch model, trace the plain fp32 graph, free the model."""
    export.steps(f"exporting the ONNX graph (opset {export.request.opset}; PyTorch)")
    names = export.inputs
    export.pruned = export_plain_graph(export.checkpoint, names, export.plain, export.request.opset)
    graph_inputs = exported_input_names(export.plain)  # the tokenizer's names in order, less any the model ignores
    if graph_inputs != names:
        ignored = [name for name in names if name not in graph_inputs]
        export.steps.note(f"the model ignores {ignored}: the graph and the runtime leave them out")
        export.inputs = graph_inputs
    export.steps.note(
        "last layer computes the [CLS] position only" if export.pruned else "full graph (no [CLS]-only head)"
    )
    export.checkpoint.model = None  # free memory before the graph passes
    release_memory()


def save_tokenizer(export: Export) -> None:
    """tokenizer.json, and how the runtime must drive it to match the Hugging Face tokenizer."""
    tokenizer = export.checkpoint.tokenizer
    path = export.tmp / TOKENIZER_FILE
    tokenizer.backend_tokenizer.save(str(path))
    export.tokenizer = TokenizerSpec(
        file=TOKENIZER_FILE,
        sha256=sha256_file(path),
        pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        pad_token=str(tokenizer.pad_token),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        padding_side=str(tokenizer.padding_side),
        truncation_side=str(tokenizer.truncation_side),
    )


# ------------------------------------------------------------------------------------------- precision stages


Builder = Callable[[Export, Precision], dict[str, Any]]


@dataclass(frozen=True)
class PrecisionBuilder:
    """How one precision's file is built: ``build`` writes ``export.file(row.name)`` and returns its manifest
    details; ``step`` is its numbered progress line (None: it takes no step of its own)."""

    build: Builder
    step: str | None = None


def _build_fp32(export: Export, row: Precision) -> dict[str, Any]:
    details = fuse(export.source(row), export.file(row.name), export.checkpoint.config, apart=export.fused_apart)
    export.steps.note(str(details.get("fused_operators", details["graph"])))
    return details


def _build_fp16(export: Export, row: Precision) -> dict[str, Any]:
    return to_mixed_fp16(export.source(row), export.file(row.name))


def _build_int8(export: Export, row: Precision) -> dict[str, Any]:
    args = (export.tmp / TOKENIZER_FILE, export.tokenizer_spec(), export.scored().max_length, export.inputs)
    feeds = calibration_feeds(*args)
    # the MatMuls are ranked on every other batch of 8 (half the pairs, every length): smaller captures, fewer
    # passes over the model; the plan is still checked on every pair
    sample = calibration_feeds(*args, batch=8)[::2]
    return quantize_int8(export.source(row), export.file(row.name), feeds=feeds, log=export.steps.note,
                         analysis_feeds=sample)


def _build_bf16(export: Export, row: Precision) -> dict[str, Any]:
    """Nothing to write: the graph it is built from, computed by OpenVINO with its hint (validated as such)."""
    return {"graph": row.file, "engine": "openvino", "inference_precision": row.openvino_hint}


def _build_int8_static(export: Export, row: Precision) -> dict[str, Any]:
    from crossonnx.engines.openvino import float_hint
    from crossonnx.exporter.openvino_int8 import quantize_static_int8

    feeds = calibration_feeds(  # one pair per feed: real lengths, no padding in the activation statistics
        export.tmp / TOKENIZER_FILE, export.tokenizer_spec(), export.scored().max_length, export.inputs, batch=1
    )
    return quantize_static_int8(export.source(row), export.file(row.name), feeds, float_hint(), log=export.steps.note)


def _build_int8_dynamic(export: Export, row: Precision) -> dict[str, Any]:
    from crossonnx.engines.openvino import float_hint
    from crossonnx.exporter.openvino_int8 import compress_dynamic_int8

    return compress_dynamic_int8(export.source(row), export.file(row.name), float_hint())


def _keep_unfused(export: Export, row: Precision) -> dict[str, Any]:
    structure = onnx.load(str(export.plain), load_external_data=False)
    save_self_contained(structure, export.plain.parent, export.file(row.name))  # one file, as every precision's
    return {"graph": "unfused (for TensorRT)"}


# Each precision of the table (crossonnx/precisions.py) and its builder; a new precision is a row there and one here
BUILDERS: dict[str, PrecisionBuilder] = {
    "fp32": PrecisionBuilder(_build_fp32, "fusing transformer operators"),
    "fp16": PrecisionBuilder(_build_fp16, "converting to mixed fp16"),
    "int8": PrecisionBuilder(_build_int8, "quantizing to int8 (measuring which MatMuls int8 hurts)"),
    "bf16": PrecisionBuilder(_build_bf16),
    "int8-static": PrecisionBuilder(
        _build_int8_static, "quantizing to static int8 for OpenVINO (NNCF, calibrated on pairs)"
    ),
    "int8-dynamic": PrecisionBuilder(_build_int8_dynamic, "storing int8 weights for OpenVINO's run-time int8 (NNCF)"),
    UNFUSED_GRAPH: PrecisionBuilder(_keep_unfused),  # with tensorrt=True
}


def build_problem(precision: str) -> str | None:
    """Why this environment cannot build ``precision`` (what its row ``needs`` to build it), or None when it can.
    A validation need (``VALIDATION_NEEDS``) unmet does not stop the build: ``validation_deferred``."""
    for need in GRAPH_OF[precision].needs:
        if need in VALIDATION_NEEDS:
            continue
        if need == NEEDS_OPENVINO:
            if not openvino_installed():
                return f"{precision} is built and validated with OpenVINO, which is not installed: {OPENVINO_INSTALL}"
        elif need == NEEDS_NNCF:
            if importlib.util.find_spec("nncf") is None:
                return f"{precision} is quantized with NNCF, which is not installed: {install_command('export')}"
        else:
            raise ValueError(f"{precision} needs {need!r}, which the exporter cannot check")
    return None


def validation_deferred(precision: str) -> tuple[str, str] | None:
    """(need, why) when this machine can build ``precision`` but not validate it (a ``VALIDATION_NEEDS`` unmet):
    the export then writes it pending validation where it next runs; None when it validates here."""
    for need in GRAPH_OF[precision].needs:
        if need == NEEDS_CPU_BF16:
            from crossonnx.engines.openvino import has_bf16

            if not has_bf16():
                return need, "the exporting CPU has no bf16 arithmetic"
        elif need in VALIDATION_NEEDS:
            raise ValueError(f"{precision} needs {need!r} to validate, which the exporter cannot check")
    return None


@dataclass(frozen=True)
class PrecisionStage:
    """One precision's row and builder. STAGES runs them in order; each may read the files of those before it."""

    row: Precision
    build: Builder  # writes export.file(precision); returns its manifest details
    step: str | None = None  # its numbered progress line; None: it takes no step of its own

    @property
    def precision(self) -> str:
        return self.row.name

    @property
    def file(self) -> str:
        return self.row.file

    @property
    def extra_files(self) -> tuple[str, ...]:
        """Files written beside ``file`` that its graph needs (an IR's weights)."""
        return self.row.extra_files

    @property
    def always(self) -> bool:
        """Built for every export (later stages read its file); the file is dropped if not wanted."""
        return any(other.built_from == self.row.name for other in GRAPHS)


# The order is the table's: the order they run in, the manifest lists them in, and they are validated in
STAGES: tuple[PrecisionStage, ...] = tuple(
    PrecisionStage(row, BUILDERS[row.name].build, BUILDERS[row.name].step) for row in GRAPHS
)
STAGE_OF = {stage.precision: stage for stage in STAGES}
# what --precision can ask for (the unfused graph comes with --tensorrt), and what every environment with the export
# extra builds
EXPORT_PRECISIONS = tuple(row.name for row in ROWS)
BASE_PRECISIONS = tuple(row.name for row in ROWS if not row.needs)


def default_precisions(note: Callable[[str], None] | None = None) -> list[str]:
    """Every precision this environment can build and validate: the table's defaults whose needs are met here."""
    chosen = []
    for row in ROWS:
        if not row.default:
            continue
        problem = build_problem(row.name)
        if problem is None:
            chosen.append(row.name)
        elif note is not None:
            note(f"not exporting {problem}")
    return chosen


def unbuildable_defaults() -> tuple[LeftOut, ...]:
    """The table's default precisions this environment cannot build, each with why (for the manifest's left_out)."""
    return tuple(LeftOut(row.name, (), None, not_built=problem) for row in ROWS
                 if row.default and (problem := build_problem(row.name)) is not None)


def build_precisions(export: Export) -> None:
    """Run the precision stages; drop the files only later stages needed, and the plain graph.

    A stage that raises fails the export where its precision must pass (``ExportRequest.required``) or a later
    stage builds on it; otherwise (a default export) its precision is left out, with the error, and the rest go on.
    """
    for stage in export.request.stages():
        if stage.step is not None:
            export.steps(stage.step)
        if stage.row.built_from in export.not_built:
            export.not_built[stage.precision] = f"it is built from {stage.row.built_from}, which was not built"
            continue
        try:
            details = stage.build(export, stage.row)
        except Exception as exc:
            if not _can_leave_out(export, stage):
                raise
            for name in (stage.file, *stage.extra_files):
                (export.tmp / name).unlink(missing_ok=True)
            export.not_built[stage.precision] = f"its build failed: {type(exc).__name__}: {exc}".splitlines()[0]
            export.steps.note(f"{stage.precision} left out: {export.not_built[stage.precision]}")
            continue
        finally:
            release_memory()
        export.details[stage.precision] = {**details, "cls_only_last_layer": export.pruned}
    kept = {STAGE_OF[precision].file for precision in export.built()}
    for precision in export.details:
        stage = STAGE_OF[precision]
        if precision not in export.built() and stage.file not in kept:
            for name in (stage.file, *stage.extra_files):
                (export.tmp / name).unlink()
    remove_graph(export.plain)
    remove_graph(export.fused_apart)


def _can_leave_out(export: Export, stage: PrecisionStage) -> bool:
    """Whether a failed build of ``stage`` may leave its precision out: not required, and no required precision is
    built from it."""
    needed_by = {p for p in export.request.required if STAGE_OF[p].row.built_from == stage.precision}
    return stage.precision not in export.request.required and not needed_by


# ------------------------------------------------------------------------------------ manifest and validation


def provisional_manifest(export: Export) -> Manifest:
    """The manifest without parity (the runtime needs it to validate); reference.json written beside it."""
    reference, config, tmp = export.scored(), export.checkpoint.config, export.tmp
    reference.write(tmp, torch_version=metadata.version("torch"))
    return Manifest(
        source=export.resolved.as_dict(),
        architecture={
            "model_type": config.model_type,
            "architectures": list(getattr(config, "architectures", None) or []),
            "num_hidden_layers": int(config.num_hidden_layers),
            "hidden_size": int(config.hidden_size),
            "num_attention_heads": int(config.num_attention_heads),
            "intermediate_size": int(getattr(config, "intermediate_size", 0)),
            "vocab_size": int(config.vocab_size),
            "max_position_embeddings": int(config.max_position_embeddings),
            "max_tokens": export.checkpoint.max_tokens,
            "stored_dtype": export.weights_dtype,
        },
        num_labels=reference.num_labels,
        activation=reference.activation,
        max_length=reference.max_length,
        inputs=export.inputs,
        output="logits",
        tokenizer=export.tokenizer_spec(),
        precisions={
            p: PrecisionEntry(
                file=STAGE_OF[p].file,
                sha256=sha256_file(export.file(p)),
                bytes=export.file(p).stat().st_size,
                details=export.details[p],
                extra_files={name: file_record(tmp / name) for name in STAGE_OF[p].extra_files},
            )
            for p in export.built()
        },
        reference={"file": REFERENCE_NAME, "pairs": len(reference.pairs)},
        versions=library_versions(VERSIONED),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def validate(export: Export) -> dict[str, Parity]:
    """Each precision against PyTorch; the parity records, or a ValidationError naming every failure where one of
    the precisions that must pass (``ExportRequest.required``) failed."""
    reference = export.scored()
    gates = parse_gate_overrides(list(export.request.gate_overrides), default_gates(reference.activation))
    parities = {}
    for precision in export.built():
        deferred = validation_deferred(precision)
        if deferred is not None:  # written unvalidated; its first use where it runs validates it
            record = pending_record(*deferred, gates[precision])
            export.pending[precision] = record
            export.steps(f"{precision} written pending validation: {awaiting(precision, record)}")
            continue
        export.steps(f"validating {precision} against PyTorch")
        parity = validate_precision(export.tmp, precision, reference, gates[precision])
        release_memory()  # the session just closed: the next one starts from the floor, not from this one's peak
        parities[precision] = parity
        export.steps.note(parity.summary())
    failed = [p for p, parity in parities.items() if not parity.passed]
    blocking = [p for p in failed if p in export.request.required]
    if blocking:
        named = export.request.required == export.request.precisions
        must = ("every precision named with --precision must pass" if named
                else f"{', '.join(blocking)} must pass; other precisions are left out when they fail")
        raise ValidationError(
            "validation failed, nothing was written: "
            + " | ".join(f"{p}: " + "; ".join(parities[p].failures) for p in failed)
            + f" ({must}). Loosen a gate only if you accept that error: "
            + " ".join(_admitting_flag(p, parities[p]) for p in failed)
        )
    return parities


def _admitting_flag(precision: str, parity: Parity) -> str:
    return left_out(precision, parity).flag or f"(no --gate admits {precision}: its scores are not finite)"


def drop_failed(export: Export, parities: dict[str, Parity]) -> tuple[LeftOut, ...]:
    """Remove the files of the precisions that failed their gates (none of them required), except those a kept
    precision reads too (bf16 runs fp32's graph); what each missed, for the manifest. Pending ones are kept."""
    failed = [p for p in export.built() if p in parities and not parities[p].passed]
    kept = {name for p in export.built() if p in export.pending or parities[p].passed
            for name in (STAGE_OF[p].file, *STAGE_OF[p].extra_files)}
    for precision in failed:
        stage = STAGE_OF[precision]
        for name in (stage.file, *stage.extra_files):
            if name not in kept:
                (export.tmp / name).unlink(missing_ok=True)
    return tuple(left_out(p, parities[p]) for p in failed)
