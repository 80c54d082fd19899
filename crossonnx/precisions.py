"""Every precision crossonnx exports and runs, in one table: one row per precision.

A row says what the precision is (one line, for the CLI's help and the manifest), which providers run it, which file
of the model folder holds its graph and which graph it is built from, the gate it must meet against PyTorch at
export, the hardware it is meant for, the inference precision OpenVINO runs it with, what building or validating it
needs beyond the export extra, and whether an export builds it by default. The rest of crossonnx derives from the
table: the manifest's list (``manifest.PRECISIONS``), which engine runs what and what ``auto`` picks
(crossonnx/engines), the export's stages and gates (crossonnx/exporter), and the benchmark worker's engine names.

A new precision is one row here plus its builder (``BUILDERS`` in crossonnx/exporter/pipeline.py). A new provider of
an existing engine is a name in the rows that it runs; a new engine also maps its providers in crossonnx/engines.

Plain data, standard library only: the runtime reads it without torch, onnx or numpy, and the benchmark worker reads
it by path in environments where crossonnx is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# Providers (crossonnx/engines): ONNX Runtime's three, and the OpenVINO engine's one
CPU, CUDA, TENSORRT, OPENVINO = "cpu", "cuda", "tensorrt", "openvino"

# OpenVINO's names for the inference precisions a row's hint can ask for (``INFERENCE_PRECISION_HINT``)
OPENVINO_F32, OPENVINO_BF16 = "f32", "bf16"

# The hardware a precision is meant for
ANY_HARDWARE = "CPUs and GPUs"
CPUS = "CPUs"
GPUS = "GPUs (it runs on a CPU too)"
BF16_CPUS = "CPUs with bf16 arithmetic (AVX-512 BF16 or AMX)"

# What a precision can need beyond the export extra: a Python module to build it, or bf16 arithmetic to validate it
NEEDS_OPENVINO, NEEDS_NNCF, NEEDS_CPU_BF16 = "openvino", "nncf", "cpu-bf16"
# The needs only validation has, and where they are met: an export on a machine without one still writes the
# precision, pending validation, which the runtime carries out on its first use where the need is met
# (crossonnx/first_use.py); a build need unmet leaves the precision out
VALIDATION_NEEDS: Mapping[str, str] = MappingProxyType({NEEDS_CPU_BF16: "a CPU with bf16 arithmetic (AVX-512 BF16 "
                                                                        "or AMX)"})


@dataclass(frozen=True)
class Limits:
    """A precision's gate against sentence-transformers on PyTorch fp32: the largest absolute score difference on
    the score's own scale, and the smallest Spearman rank correlation (None: the rank is not gated)."""

    max_abs: float  # scores an activation bounds (sigmoid, softmax: 0..1)
    max_abs_logits: float  # raw logits (identity activation), which spread wider
    min_spearman: float | None = None

    def for_activation(self, activation: str) -> tuple[float, float | None]:
        """(max absolute difference, min Spearman) for a model whose scores come out of ``activation``."""
        return (self.max_abs if activation != "identity" else self.max_abs_logits), self.min_spearman


@dataclass(frozen=True)
class Precision:
    """One precision: what it is, who runs it, where its graph lives, and the gate it is validated with."""

    name: str
    description: str  # one line: the CLI's help and manifest.PRECISIONS
    providers: tuple[str, ...]  # the providers that run it; an export validates it on the first one
    file: str  # its graph in the model folder
    gate: Limits
    extra_files: tuple[str, ...] = ()  # files beside ``file`` that its graph needs (an OpenVINO IR's weights)
    built_from: str | None = None  # the precision whose graph its builder starts from; None: the traced plain graph
    openvino_hint: str | None = None  # OpenVINO's inference precision for it, unless its manifest entry names its own
    tensorrt_fp16: bool = False  # TensorRT builds its engine with fp16 enabled (rows that TENSORRT runs)
    needs: tuple[str, ...] = ()  # what building (or validating: VALIDATION_NEEDS) it needs, checked in this order
    hardware: str = ANY_HARDWARE
    default: bool = True  # an export without --precision builds it, where its build ``needs`` are met

    def __post_init__(self) -> None:
        if (OPENVINO in self.providers) != (self.openvino_hint is not None):
            raise ValueError(f"{self.name}: a precision OpenVINO runs names its hint, and only such a precision does")

    @property
    def validated_on(self) -> str:
        """The provider an export validates it on (and ``crossonnx verify`` re-checks it on)."""
        return self.providers[0]


# The order is the order an export builds them in, lists them in its manifest and validates them in; a row's
# ``built_from`` comes before it. Why the gates sit where they do: docs/design/validation-gates.md; what each
# precision reaches on the real MiniLM cross-encoder: benchmarks/results/accuracy.md.
ROWS: tuple[Precision, ...] = (
    Precision(
        "fp32", "exact fp32 (ONNX Runtime or OpenVINO)",
        providers=(CPU, CUDA, TENSORRT, OPENVINO), file="model_fp32.onnx",
        gate=Limits(max_abs=1e-5, max_abs_logits=1e-5),
        openvino_hint=OPENVINO_F32,  # OpenVINO would run bf16 on a CPU with bf16 unless told f32
    ),
    Precision(
        "fp16", "fp16 weights and math, fp32 layer norms and softmax (ONNX Runtime; for GPUs)",
        providers=(CPU, CUDA, TENSORRT), file="model_fp16.onnx", built_from="fp32",
        gate=Limits(max_abs=5e-3, max_abs_logits=5e-2, min_spearman=0.999), tensorrt_fp16=True, hardware=GPUS,
    ),
    Precision(
        "int8", "dynamic int8: per-channel int8 weights, activations quantized at run time (ONNX Runtime)",
        providers=(CPU, CUDA), file="model_int8.onnx",
        gate=Limits(max_abs=0.1, max_abs_logits=1.0, min_spearman=0.98), hardware=CPUS,
    ),
    Precision(
        # the fused fp32 graph computed in bf16 (docs/design/unfused-bf16.md): 8 significant bits, so nearly tied
        # pairs may swap; the rank gate leaves room for that, not for a broken graph
        "bf16", "the fp32 graph computed in bf16 (OpenVINO, CPUs with bf16)",
        providers=(OPENVINO,), file="model_fp32.onnx", built_from="fp32",
        gate=Limits(max_abs=1e-2, max_abs_logits=1e-1, min_spearman=0.9995),
        openvino_hint=OPENVINO_BF16, needs=(NEEDS_OPENVINO, NEEDS_CPU_BF16), hardware=BF16_CPUS,
    ),
    Precision(
        # calibrated by NNCF on pairs, written as an OpenVINO IR (docs/design/int8-static-recipe.md, int8-static-ir.md)
        "int8-static", "static int8 calibrated on pairs (OpenVINO)",
        providers=(OPENVINO,), file="model_int8_static.xml", extra_files=("model_int8_static.bin",),
        built_from="fp32", gate=Limits(max_abs=0.05, max_abs_logits=0.5, min_spearman=0.995),
        openvino_hint=OPENVINO_F32, needs=(NEEDS_OPENVINO, NEEDS_NNCF), hardware=CPUS,
    ),
    Precision(
        # int8 weights stored by NNCF; OpenVINO quantizes each token's activations at run time
        # (docs/design/int8-dynamic-groups.md)
        "int8-dynamic", "int8 weights, activations quantized per token at run time (OpenVINO)",
        providers=(OPENVINO,), file="model_int8_dynamic.xml", extra_files=("model_int8_dynamic.bin",),
        built_from="fp32", gate=Limits(max_abs=0.05, max_abs_logits=0.5, min_spearman=0.995),
        openvino_hint=OPENVINO_F32, needs=(NEEDS_OPENVINO, NEEDS_NNCF), hardware=CPUS,
    ),
)
PRECISIONS: Mapping[str, Precision] = MappingProxyType({row.name: row for row in ROWS})
# The precision the runtime runs unless told otherwise: the exact one, which the export also checks tokens with
DEFAULT_PRECISION = "fp32"
# Each quality level's variants, most preferred first, as (provider, precision); the levels' thresholds and their
# resolution are in crossonnx/levels.py. fp32 on a GPU provider is not exact (TF32 and other reductions).
LEVEL_VARIANTS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    "exact": ((CPU, "fp32"), (OPENVINO, "fp32")),
    "faithful": ((TENSORRT, "fp16"), (CUDA, "fp16"), (OPENVINO, "bf16")),
    "fast": ((OPENVINO, "int8-static"), (OPENVINO, "int8-dynamic"), (CPU, "int8")),
})

# Not a precision one asks for: the graph before ONNX Runtime's CPU fusions, kept for TensorRT (its contrib ops are
# not TensorRT layers), which builds its fp32 and fp16 engines from it. ``export --tensorrt`` writes and validates it.
UNFUSED_GRAPH = "fp32-unfused"
UNFUSED = Precision(
    UNFUSED_GRAPH, "the fp32 graph before ONNX Runtime's CPU fusions (for TensorRT)", providers=(CPU, CUDA),
    file="model_fp32_unfused.onnx", gate=Limits(max_abs=1e-5, max_abs_logits=1e-5), default=False,
)
# Every graph an export can write, in the order it builds, lists and validates them
GRAPHS: tuple[Precision, ...] = (*ROWS, UNFUSED)
GRAPH_OF: Mapping[str, Precision] = MappingProxyType({row.name: row for row in GRAPHS})


def runs_on(provider: str) -> tuple[str, ...]:
    """The precisions ``provider`` runs, in table order."""
    return tuple(row.name for row in ROWS if provider in row.providers)
