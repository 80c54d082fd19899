"""Quality levels a user can name instead of a precision: ``exact``, ``faithful`` and ``fast``.

A level is a promise about agreement with sentence-transformers on PyTorch fp32, not a number format. It resolves to
a concrete (provider, precision) from three things: what the model folder holds (its manifest), the agreement the
export measured and recorded for each precision (a precision qualifies for a level only if its record meets the
level's thresholds), and what this machine can run (``Machine``: OpenVINO installed, bf16 arithmetic, GPU
providers). A level the folder cannot meet here falls back to the next more accurate one (fast -> faithful ->
exact), and the choice's ``reason`` says so; never to a less accurate one. docs/precisions.md ("How levels are
decided") explains the measure.

A variant the export wrote pending validation (bf16 exported on a CPU without bf16: crossonnx/first_use.py) has no
record to judge. It qualifies only on its verdict measured on this machine, judged against the level's thresholds
exactly as a recorded one: ``check_pending`` gives that verdict (the encoder passes ``first_use.checker``, which reads
the stored one or runs the check once, one compile and the reference pairs, and stores it). With no passing verdict
it does not qualify, and the level falls back as it would for any other variant, the reason saying it awaits
validation. So a pending variant never makes a level less accurate than promised; and checking it at resolution,
rather than always falling back until someone loads it by name, lets ``faithful`` reach bf16 on a fresh bf16 CPU.
Only a variant the resolution would otherwise pick is checked (the rejections are computed lazily).

Without measured speeds the choice follows a static preference per level (``basis`` "static rule"); ``speeds``
(variant key ``"provider/precision"`` -> a speed, higher is faster, as ``crossonnx tune`` measures them:
crossonnx/tune.py) picks the fastest qualifying variant instead (``basis`` "tuned"). Nothing heavy at import:
onnxruntime and openvino are imported only by ``Machine.probe()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from crossonnx import cpu
from crossonnx.errors import PrecisionNotExportedError, ProviderUnavailableError
from crossonnx.manifest import UNFUSED_GRAPH, Manifest
from crossonnx.parity import Parity
from crossonnx.precisions import CPU, CUDA, LEVEL_VARIANTS, OPENVINO, OPENVINO_BF16, PRECISIONS, TENSORRT

# From most to least accurate; a level falls back only towards the start of this tuple
LEVELS = ("exact", "faithful", "fast")
# What decided a choice among the qualifying variants: measured speeds, or each level's order of preference
TUNED, STATIC_RULE = "tuned", "static rule"
GPU_PROVIDERS = (TENSORRT, CUDA)


@dataclass(frozen=True)
class Level:
    """A level's thresholds against PyTorch fp32 on the export's validation pairs (None: not required) and the
    variants that are meant to meet it, in static preference order."""

    name: str
    description: str
    max_abs: float | None  # on scores an activation bounds (sigmoid, softmax: 0..1)
    max_abs_logits: float | None  # on raw logits (identity activation), which spread wider
    min_spearman: float | None  # compared with the recorded separated Spearman (plain Spearman in older folders)
    variants: tuple[tuple[str, str], ...]  # (provider, precision), most preferred first

    def max_abs_for(self, activation: str) -> float | None:
        return self.max_abs if activation != "identity" else self.max_abs_logits


# The thresholds, written once; each level's variants come from the precision table. fp32 on ONNX Runtime's CPU
# provider and on OpenVINO with its f32 hint are the exact engines (docs/openvino.md).
LEVEL_TABLE: Mapping[str, Level] = {
    "exact": Level(
        "exact", "scores within 1e-5 of PyTorch fp32", max_abs=1e-5, max_abs_logits=1e-5, min_spearman=None,
        variants=LEVEL_VARIANTS["exact"],
    ),
    "faithful": Level(
        "faithful", "Spearman >= 0.9999 and max abs <= 0.01 against PyTorch fp32",
        max_abs=1e-2, max_abs_logits=1e-1, min_spearman=0.9999,
        variants=LEVEL_VARIANTS["faithful"],
    ),
    "fast": Level(
        "fast", "Spearman >= 0.999 against PyTorch fp32", max_abs=None, max_abs_logits=None, min_spearman=0.999,
        variants=LEVEL_VARIANTS["fast"],
    ),
}


@dataclass(frozen=True)
class Machine:
    """What this machine can run: OpenVINO installed, bf16 arithmetic on the CPU, and the ONNX Runtime providers
    that work here (``tensorrt`` only where its libraries load). Tests build it by hand to cover other machines."""

    openvino: bool
    bf16: bool
    providers: tuple[str, ...] = (CPU,)

    @classmethod
    def probe(cls) -> Machine:
        """This machine, from the real probes (imports onnxruntime, and openvino when installed)."""
        from crossonnx.engines import available_providers, openvino_installed
        from crossonnx.engines import onnxruntime as ort_engine

        openvino = openvino_installed()
        if openvino:
            from crossonnx.engines.openvino import has_bf16

            bf16 = has_bf16()
        else:
            bf16 = cpu.has_bf16()  # from /proc/cpuinfo, with no OpenVINO to ask
        providers = [p for p in available_providers(openvino=False) if p != TENSORRT or ort_engine.tensorrt_loadable()]
        return cls(openvino=openvino, bf16=bf16, providers=tuple(providers))

    def runs(self, provider: str, precision: str) -> str | None:
        """None when this machine runs ``precision`` on ``provider``; else why not, in a few words."""
        if provider == OPENVINO:
            if not self.openvino:
                return "OpenVINO is not installed"
            if PRECISIONS[precision].openvino_hint == OPENVINO_BF16 and not self.bf16:
                return "this CPU has no bf16 arithmetic"
            return None
        if provider not in self.providers:
            return f"no {provider} provider here"
        return None


@dataclass(frozen=True)
class LevelChoice:
    """What a level resolved to: the concrete provider and precision, and a sentence saying what and why."""

    level: str  # the level asked for
    met: str  # the level the choice meets: ``level``, or a more accurate one it fell back to
    provider: str
    precision: str
    reason: str
    basis: str = STATIC_RULE  # TUNED: measured speeds chose among the qualifying variants

    @property
    def fell_back(self) -> bool:
        return self.met != self.level

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "met": self.met, "provider": self.provider, "precision": self.precision,
                "basis": self.basis, "reason": self.reason}


def variant_key(provider: str, precision: str) -> str:
    """The name of a variant in a ``speeds`` mapping: ``"provider/precision"``, e.g. ``"openvino/bf16"``."""
    return f"{provider}/{precision}"


def agreement(parity: Parity) -> float | None:
    """The rank agreement a level is judged on: the separated Spearman where the export recorded it, else the plain
    Spearman (folders exported before it); None where the record cannot vouch for the rank (reference scores nearly
    tied, so the export did not gate Spearman)."""
    if not parity.spearman_gated:
        return None
    value = parity.spearman_separated if parity.spearman_separated is not None else parity.spearman
    return None if value is None or math.isnan(value) else float(value)


# A pending variant's verdict on this machine, as a parity record: None where it cannot be had here
PendingCheck = Callable[[str, str], Parity | None]  # (provider, precision) -> verdict


def shortfall(manifest: Manifest, precision: str, level: str, measured_here: Parity | None = None) -> str | None:
    """None when the recorded parity of ``precision`` meets ``level``'s thresholds; else what it misses. For an
    entry pending validation, ``measured_here`` is its first-use verdict on this machine (None: not validated)."""
    entry = manifest.precisions.get(precision)
    if entry is None:
        return "not in the folder"
    parity = entry.parity
    if entry.pending is not None:
        if measured_here is None:
            return f"awaits validation on this machine ({entry.pending['why']})"
        if not measured_here.passed or not measured_here.finite:
            return "failed its first-use validation here: " + "; ".join(measured_here.failures)
        parity = measured_here
    if parity is None:
        return "no recorded parity"
    if not parity.passed or not parity.finite:
        return "failed its export gate"
    spec = LEVEL_TABLE[level]
    max_abs = spec.max_abs_for(manifest.activation)
    if max_abs is not None and not parity.max_abs_diff <= max_abs:
        return f"max abs diff {parity.max_abs_diff:.3g} > {max_abs:g}"
    if spec.min_spearman is not None:
        rho = agreement(parity)
        if rho is None:
            return "rank agreement not measurable: reference scores nearly tied"
        if rho < spec.min_spearman:
            return f"Spearman {rho:.5f} < {spec.min_spearman:g}"
    return None


def _why_not(manifest: Manifest, provider: str, precision: str, level: str, machine: Machine,
             verdict: Callable[[str, str], Parity | None]) -> str | None:
    """None when the variant qualifies for ``level`` and runs here; else why not. ``verdict`` gives a pending
    variant's first-use verdict here, asked only once the variant runs here."""
    if precision not in manifest.precisions:
        return "not in the folder"
    cannot = machine.runs(provider, precision)
    pending = manifest.precisions[precision].pending
    if cannot is not None:
        return cannot + (f"; it awaits validation on {pending['where']}" if pending is not None else "")
    if provider == TENSORRT and UNFUSED_GRAPH not in manifest.precisions:
        return f"no {UNFUSED_GRAPH} graph (export --tensorrt)"
    return shortfall(manifest, precision, level, verdict(provider, precision) if pending is not None else None)


def resolve_level(
    manifest: Manifest,
    level: str,
    provider: str = "auto",
    machine: Machine | None = None,
    speeds: Mapping[str, float] | None = None,
    speed_unit: str = "pairs/s",
    check_pending: PendingCheck | None = None,
) -> LevelChoice:
    """A level -> the (provider, precision) that meets it, or a more accurate level, here; or a clear error.

    ``provider``: ``"auto"``, or a provider name that the choice must use. ``machine`` defaults to
    ``Machine.probe()``. ``speeds`` (``variant_key`` -> pairs/s) chooses the fastest measured variant that meets the
    level, from its own variants and those of the more accurate levels; without it (or where it measured none of
    them) each level's static preference order decides. ``speed_unit`` names what a speed counts, for the reason.
    ``check_pending`` gives the first-use verdict here of a variant pending validation (see the module's docstring);
    without it such a variant never qualifies.
    """
    if level not in LEVEL_TABLE:
        raise ValueError(f"unknown level {level!r}; use one of: {', '.join(LEVELS)}")
    wanted = _provider_name(provider)
    machine = Machine.probe() if machine is None else machine
    if wanted is not None and not (machine.openvino if wanted == OPENVINO else wanted in machine.providers):
        raise ProviderUnavailableError(f"provider {wanted!r} is not available here (level {level!r} was asked for)")
    speeds = speeds or {}
    asked = LEVELS.index(level)
    notes: list[str] = []
    verdicts: dict[tuple[str, str], Parity | None] = {}  # each pending variant checked once, when first needed

    def verdict(provider_: str, precision_: str) -> Parity | None:
        if (provider_, precision_) not in verdicts:
            verdicts[provider_, precision_] = check_pending(provider_, precision_) if check_pending else None
        return verdicts[provider_, precision_]

    for index in range(asked, -1, -1):  # the level asked for, then each more accurate one
        current = LEVELS[index]
        pool = [v for lvl in LEVELS[: index + 1][::-1] for v in LEVEL_TABLE[lvl].variants]
        if wanted is not None:
            pool = [v for v in pool if v[0] == wanted]
        own = [v for v in pool if v in LEVEL_TABLE[current].variants]
        rejections: dict[tuple[str, str], str | None] = {}

        def rejected(v: tuple[str, str], current: str = current, rejections: dict = rejections) -> str | None:
            if v not in rejections:  # lazily: a pending variant is checked only where it could be chosen
                rejections[v] = _why_not(manifest, *v, current, machine, verdict)
            return rejections[v]

        measured = [v for v in pool if variant_key(*v) in speeds and rejected(v) is None]
        if measured:
            best = max(measured, key=lambda v: speeds[variant_key(*v)])
            how = f"the fastest measured variant that meets it ({speeds[variant_key(*best)]:.4g} {speed_unit})"
            if best not in own:
                owner = next(lvl for lvl in LEVELS if best in LEVEL_TABLE[lvl].variants)
                how += f", an {owner} variant" if owner[0] in "aeiou" else f", a {owner} variant"
        else:
            best = next((v for v in own if rejected(v) is None), None)
            how = f"the first qualifying variant in {current}'s order of preference"
        if best is None:
            tried = "; ".join(f"{p} on {_engine(pr)}: {rejected((pr, p))}" for pr, p in own) or "no variant"
            if wanted is not None and not own:
                tried = f"no {current} variant runs on {wanted}"
            notes.append(f"{current} cannot be met here ({tried})")
            continue
        provider_, precision = best
        reason = f"{level}: {precision} on {_engine(provider_)}, {how}"
        if current != level:
            reason += f"; fell back to {current} because " + "; ".join(notes)
        reason += f" ({_recorded(manifest, precision, verdicts.get(best))})"
        return LevelChoice(level, current, provider_, precision, reason, TUNED if measured else STATIC_RULE)
    exported = ", ".join(sorted(manifest.precisions)) or "none"
    raise PrecisionNotExportedError(
        f"no exported precision meets level {level!r} or a more accurate one here: " + "; ".join(notes)
        + f" (exported: {exported}). Export fp32 with: crossonnx export <model> --precision fp32"
    )


def _provider_name(provider: str) -> str | None:
    if not isinstance(provider, str):
        raise TypeError(f"provider must be a string, got {type(provider).__name__}")
    name = provider.strip().lower()
    if name == "auto":
        return None
    short = {"cpuexecutionprovider": CPU, "cudaexecutionprovider": CUDA,
             "tensorrtexecutionprovider": TENSORRT}.get(name, name)
    if short not in (CPU, CUDA, TENSORRT, OPENVINO):
        raise ProviderUnavailableError(
            f"unknown provider {provider!r}; use 'auto' or one of: {', '.join((CPU, CUDA, TENSORRT, OPENVINO))}"
        )
    return short


def _engine(provider: str) -> str:
    return {CPU: "ONNX Runtime CPU", CUDA: "ONNX Runtime CUDA", TENSORRT: "TensorRT", OPENVINO: "OpenVINO"}[provider]


def _recorded(manifest: Manifest, precision: str, measured_here: Parity | None) -> str:
    entry = manifest.precisions[precision]
    parity = measured_here if entry.pending is not None else entry.parity
    assert parity is not None  # a qualified precision has a record, or a verdict measured here
    rho = agreement(parity)
    which = "separated Spearman" if parity.spearman_separated is not None else "Spearman"
    rank = f", {which} {rho:.5f}" if rho is not None else ""
    where = "validated on this machine at first use" if entry.pending is not None else "recorded at export"
    return f"{where}: max abs diff {parity.max_abs_diff:.2g}{rank}"
