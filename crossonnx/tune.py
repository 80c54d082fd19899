"""``crossonnx tune``: measure, on this machine, every variant a model folder holds and this machine runs, and keep
the result where ``CrossEncoder`` finds it.

All variants (provider, precision) are loaded into one process and then take turns over two rounds (the second in
reverse order, cut short at the time limit), so that drift in a shared machine's load hits all of them alike. Each
turn measures throughput (pairs/s on query-passage pairs of real text, at the engine's token budget, half of it and
twice it, those of them that batch the pairs differently; the best is kept) and batch-1 latency (p50 of one-pair
calls). The result is stored as JSON in the crossonnx cache under a key made of the folder's checksums (from its
manifest), the CPU (model name and flags), the thread count and the versions of the libraries that run it; a result
whose key no longer matches (the folder re-exported, another CPU, an upgrade) is never found again.

``CrossEncoder`` reads it (``load_tuned``): a level and ``provider="auto"`` then choose the fastest variant for
the workload asked for (``"throughput"`` by default, or ``"latency"``), and ``token_budget="auto"`` takes the
measured best budget. Without a stored result the static rules of crossonnx/levels.py and crossonnx/engines apply.
Both measurements are stored; the workload only changes the pick. A service calls ``ensure_tuned`` before loading
its encoder to measure once per folder, machine and upgrade; ``crossonnx serve`` does so by default wherever
``open_choice`` finds a choice to make (a level, or ``provider="auto"`` with more than one engine for the precision).
"""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crossonnx import cpu
from crossonnx.batching import plan_batches
from crossonnx.errors import PrecisionNotExportedError
from crossonnx.levels import LEVELS, Machine, PendingCheck, agreement, resolve_level, shortfall, variant_key
from crossonnx.manifest import UNFUSED_GRAPH, Manifest, load_manifest
from crossonnx.paths import cache_root, write_json
from crossonnx.precisions import PRECISIONS, TENSORRT
from crossonnx.tokenization import PairTokenizer
from crossonnx.versions import library_versions

logger = logging.getLogger("crossonnx")

WORKLOADS = ("throughput", "latency")
DEFAULT_WORKLOAD = "throughput"  # what CrossEncoder tunes for unless told (bulk scoring: predict, rank, score-file)
SPEED_UNITS = {"throughput": "pairs/s", "latency": "batch-1 calls/s"}
DEFAULT_SECONDS = 60.0
SCHEMA = 1
TUNED_FOLDER = "tuned"  # under the cache root
# The libraries whose upgrade can change which variant is fastest
VERSIONED = ("crossonnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tokenizers", "numpy")

PAIRS = 256  # query-passage pairs (crossonnx/bench/workloads.py, seed 0): 2-8 word queries, 40-150 word passages
CHUNK = 32  # pairs per timed predict call: a measurement takes at least one
WARM_UP = 8  # pairs scored once, untimed, after loading
ROWS = 32  # rows per model call at most: predict's default batch_size
BUDGET_FACTORS = (0.5, 1.0, 2.0)  # token budgets tried, against the engine's own
MIN_BUDGET, DEFAULT_BUDGET = 64, 2048  # an engine without a budget of its own is tried around DEFAULT_BUDGET
KEEP_DEFAULT_WITHIN = 0.05  # another budget replaces the engine's own only when faster by more than this share
ROUNDS = 2
THROUGHPUT_SHARE = 0.7  # of each variant's turn; the rest measures latency
MIN_LATENCY_CALLS = 5


@dataclass(frozen=True)
class VariantSpeed:
    """One variant's measurements: throughput at each token budget tried, the best, and batch-1 latency."""

    provider: str
    precision: str
    pairs_per_s: float  # at ``token_budget``
    token_budget: int
    pairs_per_s_by_budget: dict[int, float]
    latency_ms_p50: float
    latency_calls: int

    @property
    def key(self) -> str:
        return variant_key(self.provider, self.precision)

    def speed(self, workload: str) -> float:
        """Higher is faster: pairs/s for throughput, batch-1 calls/s for latency."""
        return self.pairs_per_s if workload == "throughput" else 1000.0 / self.latency_ms_p50


@dataclass(frozen=True)
class TuneResult:
    """What ``tune`` measured, and the identity (folder, machine, threads, versions) its key is made of."""

    key: str
    identity: dict[str, Any]
    variants: tuple[VariantSpeed, ...]
    threads: int
    seconds: float
    measured: str  # UTC date and time
    model_dir: str  # where the folder was when tuned (the key does not depend on it)
    path: Path | None = field(default=None, compare=False)  # where it is stored

    def speeds(self, workload: str = DEFAULT_WORKLOAD) -> dict[str, float]:
        """``variant_key`` -> speed for ``workload`` (higher is faster), what ``resolve_level`` takes."""
        check_workload(workload)
        return {v.key: v.speed(workload) for v in self.variants}

    def variant(self, provider: str, precision: str) -> VariantSpeed | None:
        return next((v for v in self.variants if (v.provider, v.precision) == (provider, precision)), None)

    def provider_for(self, precision: str, workload: str, machine: Machine) -> tuple[str, str] | None:
        """The fastest measured provider for ``precision`` that still runs here, and why; None if none was."""
        runs = [v for v in self.variants if v.precision == precision and machine.runs(v.provider, precision) is None]
        if not runs:
            return None
        best = max(runs, key=lambda v: v.speed(workload))
        figures = ", ".join(f"{v.provider} {_figure(v, workload)}" for v in runs)
        return best.provider, f"tuned for {workload}: {precision} measured fastest on {best.provider} here ({figures})"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        out["schema"] = SCHEMA
        for variant in out["variants"]:
            variant["pairs_per_s_by_budget"] = {str(k): v for k, v in variant["pairs_per_s_by_budget"].items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> TuneResult:
        variants = tuple(
            VariantSpeed(**{**v, "pairs_per_s_by_budget": {int(k): float(x) for k, x in
                                                           v["pairs_per_s_by_budget"].items()}})
            for v in data["variants"]
        )
        return cls(key=data["key"], identity=data["identity"], variants=variants, threads=int(data["threads"]),
                   seconds=float(data["seconds"]), measured=data["measured"], model_dir=data["model_dir"], path=path)


def check_workload(workload: object) -> str:
    if not isinstance(workload, str) or workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(map(repr, WORKLOADS))}, got {workload!r}")
    return workload


def _figure(variant: VariantSpeed, workload: str) -> str:
    return (f"{variant.pairs_per_s:.4g} pairs/s" if workload == "throughput"
            else f"p50 {variant.latency_ms_p50:.3g} ms at batch 1")


# --- the key -------------------------------------------------------------------------------------------------------


def folder_identity(manifest: Manifest) -> dict[str, Any]:
    """The folder's content as its manifest records it: every graph's and extra file's checksum, the tokenizer's,
    and the length limit (no file is read again)."""
    files = {name: [entry.sha256, *sorted(record["sha256"] for record in entry.extra_files.values())]
             for name, entry in sorted(manifest.precisions.items())}
    return {"files": files, "tokenizer": manifest.tokenizer.sha256, "max_length": manifest.max_length}


@functools.cache
def machine_identity() -> dict[str, Any]:
    """The CPU (model name and flags) and the versions of the libraries that run the model (once per process)."""
    return {"cpu": _cpu_model(), "flags": sorted(cpu.cpu_flags()), "machine": platform.machine(),
            "versions": library_versions(VERSIONED)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tune_key(manifest: Manifest, threads: int) -> tuple[str, dict[str, Any]]:
    """(key, identity): the key is a hash of the identity, which the stored result also holds."""
    identity = {"folder": folder_identity(manifest), **machine_identity(), "threads": int(threads)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
    return digest[:24], identity


def tuned_folder() -> Path:
    return cache_root() / TUNED_FOLDER


def tuned_path(key: str) -> Path:
    return tuned_folder() / f"{key}.json"


def store(result: TuneResult) -> Path:
    """Write ``result`` under its key, whole or not at all (a temporary file renamed over the old one)."""
    return write_json(tuned_path(result.key), result.to_dict())


def load_tuned(manifest: Manifest, threads: int) -> TuneResult | None:
    """The result stored for this folder, machine, thread count and library versions; None when there is none (or
    it cannot be read, which is logged)."""
    key, identity = tune_key(manifest, threads)
    path = tuned_path(key)
    if not path.is_file():
        return None
    try:
        result = TuneResult.from_dict(json.loads(path.read_text(encoding="utf-8")), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("crossonnx: ignoring the tuned result %s, which cannot be read (%s); run crossonnx tune "
                       "again", path, exc)
        return None
    if result.identity != identity:  # a hash collision, or a file copied under another name
        return None
    return result


# --- measuring -----------------------------------------------------------------------------------------------------


def runnable_variants(manifest: Manifest, machine: Machine) -> list[tuple[str, str]]:
    """Every (provider, precision) the folder holds and this machine runs, in the precision table's order."""
    out = []
    for precision in manifest.precisions:
        if precision == UNFUSED_GRAPH:
            continue
        for provider in PRECISIONS[precision].providers:
            if machine.runs(provider, precision) is not None:
                continue
            if provider == TENSORRT and UNFUSED_GRAPH not in manifest.precisions:
                continue
            out.append((provider, precision))
    return out


class _Scorer(Protocol):
    """What tune needs of a CrossEncoder (crossonnx.encoder imports this module, so not the class itself)."""

    token_budget: int | None

    def predict(self, pairs: list[tuple[str, str]], batch_size: int) -> Any: ...


@dataclass
class _Tally:
    """One variant's running totals over the rounds."""

    own: int  # the engine's own token budget
    budgets: dict[int, list[float]]  # budget -> [pairs, seconds]
    latencies_ms: list[float] = field(default_factory=list)


def _distinct(budgets: set[int], own: int, chunks: list[Any]) -> dict[int, list[float]]:
    """The budgets that batch the measured chunks (their token lengths) differently, each with [pairs, seconds] at
    zero. Of budgets that cut every chunk alike (those beyond what ``ROWS`` rows of these pairs fill) only one is
    measured: the engine's own where it is one of them, else the smallest."""
    alike: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for budget in sorted(budgets):
        plan = tuple(tuple(len(rows) for rows in plan_batches(lengths, ROWS, budget)) for lengths in chunks)
        alike.setdefault(plan, []).append(budget)
    return {own if own in group else group[0]: [0, 0.0] for group in alike.values()}


def _throughput(encoder: _Scorer, pairs: list[tuple[str, str]], seconds: float) -> tuple[int, float]:
    """Pairs scored and seconds taken, scoring chunks of ``pairs`` from the start until ``seconds`` passed."""
    done, elapsed, start = 0, 0.0, 0
    while done == 0 or elapsed < seconds:
        chunk = pairs[start : start + CHUNK]
        start = (start + CHUNK) % len(pairs)
        t0 = time.perf_counter()
        encoder.predict(chunk, batch_size=ROWS)
        elapsed += time.perf_counter() - t0
        done += len(chunk)
    return done, elapsed


def _latency(encoder: _Scorer, pairs: list[tuple[str, str]], seconds: float) -> list[float]:
    """Milliseconds of one-pair calls, for ``seconds`` or ``MIN_LATENCY_CALLS`` calls, whichever is more."""
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < MIN_LATENCY_CALLS or time.perf_counter() - began < seconds:
        pair = pairs[len(times) % len(pairs)]
        t0 = time.perf_counter()
        encoder.predict([pair], batch_size=1)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _measure(
    encoders: dict[tuple[str, str], _Scorer],
    load: Callable[[str, str], _Scorer],
    variants: list[tuple[str, str]],
    pairs: list[tuple[str, str]],
    chunks: list[Any],
    deadline: float,
    say: Callable[[str], None],
) -> dict[tuple[str, str], _Tally]:
    """Load every variant into ``encoders`` (the caller frees them: ``_release``), then measure them in turns over
    ``ROUNDS`` rounds until ``deadline``: each variant's tally. A variant that fails its first-use validation here
    (a precision the export could not validate: crossonnx/first_use.py) is left out, not measured."""
    from crossonnx.errors import ValidationError

    tallies: dict[tuple[str, str], _Tally] = {}
    encoder: _Scorer | None = None
    try:
        for provider, precision in list(variants):
            say(f"loading {variant_key(provider, precision)}")
            try:
                encoder = encoders[provider, precision] = load(provider, precision)
            except ValidationError as exc:
                say(f"{variant_key(provider, precision)} left out: {str(exc).split('. ')[0]}")
                variants = [v for v in variants if v != (provider, precision)]
                continue
            encoder.predict(pairs[:WARM_UP], batch_size=ROWS)  # thread pools, first shapes
            encoder.predict([pairs[0]], batch_size=1)
            own = int(encoder.token_budget or DEFAULT_BUDGET)
            budgets = _distinct({max(MIN_BUDGET, int(own * factor)) for factor in BUDGET_FACTORS}, own, chunks)
            tallies[provider, precision] = _Tally(own, budgets)
        turn = max(deadline - time.perf_counter(), 0.0) / (ROUNDS * len(variants))
        for round_no in range(ROUNDS):
            order = variants if round_no % 2 == 0 else variants[::-1]  # drift within a round evens out over two
            for variant in order:
                if round_no > 0 and time.perf_counter() >= deadline:  # the first round always runs, whole
                    break
                encoder, tally = encoders[variant], tallies[variant]
                for budget, totals in tally.budgets.items():
                    encoder.token_budget = budget
                    done, took = _throughput(encoder, pairs, turn * THROUGHPUT_SHARE / len(tally.budgets))
                    totals[0] += done
                    totals[1] += took
                tally.latencies_ms += _latency(encoder, pairs, turn * (1 - THROUGHPUT_SHARE))
            say(f"round {round_no + 1} of {ROUNDS} done")
    finally:
        encoder = None  # not kept alive by a traceback past _release
    return tallies


def _release(encoders: dict[tuple[str, str], _Scorer]) -> None:
    """Free the encoders in the reverse order of their loading. OpenVINO's CPU plugin gives the thread that compiles
    a model an alternate signal stack of its own and puts back the one it replaced when the model is freed: freed in
    any other order, the thread is left with a stack already freed, and the next signal it takes (a server's SIGTERM)
    crashes the process."""
    while encoders:
        encoders.popitem()  # the last loaded first
        gc.collect()  # an encoder held in a reference cycle goes now, not later in another order


def tune(
    model_dir: str | Path,
    seconds: float = DEFAULT_SECONDS,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Measure every variant ``model_dir`` holds and this machine runs, in about ``seconds`` in all (loading
    included), store the result (``store``) and return it. ``threads``: as ``CrossEncoder`` (default: all CPUs)."""
    from crossonnx.bench.workloads import query_passage_pairs
    from crossonnx.encoder import CrossEncoder
    from crossonnx.engines import default_threads

    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < math.inf:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    say = log or (lambda message: None)
    began = time.perf_counter()
    manifest = load_manifest(model_dir)
    threads = default_threads() if threads is None else threads
    machine = Machine.probe()
    variants = runnable_variants(manifest, machine)
    if not variants:
        raise PrecisionNotExportedError(
            f"{model_dir} holds no precision this machine runs (exported: {', '.join(manifest.precisions)})")
    pairs = query_passage_pairs(PAIRS, 0)
    tokenizer = PairTokenizer(Path(model_dir) / manifest.tokenizer.file, manifest.tokenizer, manifest.max_length,
                              manifest.inputs)
    chunks = [tokenizer.encode(pairs[start : start + CHUNK]).lengths for start in range(0, len(pairs), CHUNK)]
    encoders: dict[tuple[str, str], _Scorer] = {}
    try:
        tallies = _measure(encoders, lambda provider, precision: CrossEncoder(
            model_dir, precision=precision, provider=provider, threads=threads, workload=None),
            variants, pairs, chunks, began + seconds, say)
    finally:
        _release(encoders)
    speeds = []
    for (provider, precision), tally in tallies.items():
        rates = {budget: done / took for budget, (done, took) in tally.budgets.items()}
        best = max(rates, key=rates.__getitem__)
        if rates[best] <= rates[tally.own] * (1 + KEEP_DEFAULT_WITHIN):
            best = tally.own
        speeds.append(VariantSpeed(provider, precision, rates[best], best, rates,
                                   statistics.median(tally.latencies_ms), len(tally.latencies_ms)))
    key, identity = tune_key(manifest, threads)
    result = TuneResult(key, identity, tuple(speeds), threads, time.perf_counter() - began,
                        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), str(Path(model_dir).resolve()))
    path = store(result)
    return TuneResult(**{**result.__dict__, "path": path})


def ensure_tuned(
    model_dir: str | Path,
    threads: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """The result stored for ``model_dir`` on this machine with ``threads``, measured first (``tune``) where none
    matches."""
    from crossonnx.engines import default_threads

    threads = default_threads() if threads is None else threads
    found = load_tuned(load_manifest(model_dir), threads)
    return found if found is not None else tune(model_dir, seconds, threads, log)


def open_choice(manifest: Manifest, precision: str, provider: str, machine: Machine) -> str | None:
    """Why a measurement would decide what ``precision`` and ``provider`` load here, in a few words; None where there
    is nothing to choose: a concrete precision on a named provider, or fewer than two runnable variants the choice
    could fall on (for a level: those that meet it or a more accurate level, as ``resolve_level`` falls back)."""
    candidates = runnable_variants(manifest, machine)
    if provider != "auto":
        candidates = [v for v in candidates if v[0] == provider]
    if precision in LEVELS:
        accurate = LEVELS[: LEVELS.index(precision) + 1]
        candidates = [v for v in candidates if any(shortfall(manifest, v[1], lvl) is None for lvl in accurate)]
        what = f"level {precision!r}"
    elif provider == "auto":
        candidates = [v for v in candidates if v[1] == precision]
        what = f"provider 'auto' for {precision}"
    else:
        return None
    if len(candidates) < 2:
        return None
    return f"{what} can run as {', '.join(variant_key(*v) for v in candidates)}"


# --- what it prints ------------------------------------------------------------------------------------------------


def choices(manifest: Manifest, result: TuneResult, workload: str, machine: Machine,
            check_pending: PendingCheck | None = None) -> dict[str, str]:
    """level -> the variant it resolves to with ``result``'s speeds for ``workload`` ("not met here" when none);
    ``check_pending`` as in ``resolve_level`` (variants awaiting their first-use validation here)."""
    out = {}
    for level in LEVELS:
        try:
            choice = resolve_level(manifest, level, machine=machine, speeds=result.speeds(workload),
                                   speed_unit=SPEED_UNITS[workload], check_pending=check_pending)
        except PrecisionNotExportedError:
            out[level] = "not met here"
            continue
        variant = result.variant(choice.provider, choice.precision)
        figure = f" ({_figure(variant, workload)})" if variant is not None else ""
        met = f", meets {choice.met}" if choice.fell_back else ""
        out[level] = f"{variant_key(choice.provider, choice.precision)}{figure}{met}"
    return out


def table(manifest: Manifest, result: TuneResult, workload: str) -> list[str]:
    """The measured table: variant, pairs/s at its best token budget, that budget, p50 ms at batch 1, the agreement
    the export recorded, and the most accurate level that agreement meets; the fastest for ``workload`` marked *."""
    check_workload(workload)
    fastest = max(result.variants, key=lambda v: v.speed(workload))
    header = (f"  {'variant':26s} {'pairs/s':>9s} {'budget':>7s} {'p50 ms':>8s} {'max abs diff':>12s} "
              f"{'Spearman':>9s}  level")
    lines = [header, "  " + "-" * (len(header) - 2)]
    for v in result.variants:
        parity = manifest.precisions[v.precision].parity
        max_abs = f"{parity.max_abs_diff:12.2e}" if parity is not None else f"{'-':>12s}"
        rho = agreement(parity) if parity is not None else None
        rank = f"{rho:9.5f}" if rho is not None else f"{'not gated':>9s}"
        level = next((lvl for lvl in LEVELS if shortfall(manifest, v.precision, lvl) is None), "-")
        mark = "*" if v is fastest else " "
        lines.append(f"{mark} {v.key:26s} {v.pairs_per_s:9.1f} {v.token_budget:7d} {v.latency_ms_p50:8.2f} "
                     f"{max_abs} {rank}  {level}")
    return lines
