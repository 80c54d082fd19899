"""OpenVINO's int8 precisions, both made with NNCF from the fp32 graph: int8-static and int8-dynamic.

int8-static is post-training quantization calibrated on the export's pairs; int8-dynamic (at the end of this
module) stores int8 weights and lets OpenVINO quantize the activations of each token at run time.

int8-static

How the recipe was found on the real MiniLM cross-encoder (crossonnx's fused fp32 graph read by OpenVINO, Spearman
against PyTorch fp32 on held-out query-passage pairs and STSb test pairs) is recorded in
docs/design/int8-static-recipe.md; in short:

- NNCF's defaults for transformers (symmetric activations, SmoothQuant alpha 0.95, head quantized) rank worst;
- asymmetric activations (``MIXED``: the feed-forward input after GELU is mostly positive), head kept out, do better;
- the feed-forward down-projection (input: GELU output) is by far the most sensitive MatMul, most of all in the
  first layers; keeping it out of int8 in the first layers, with SmoothQuant alpha 0.8, does best;
- NNCF's transformer preset also quantizes attention's two activation-by-activation MatMuls (query x key, and the
  softmax probabilities x value: one scale per tensor for probabilities in 0..1). Leaving them in the inference
  precision ranks better, at the same speed: OpenVINO's int8 attention runs no faster than its float one
  (docs/design/int8-static-attention-float.md).

So the plan is: asymmetric activations, SmoothQuant 0.8, the classifier head (the last two weight MatMuls) and
attention's activation MatMuls left in float, and the fewest down-projections, first layers first, left in float
until the int8 model meets the target against the fp32 graph on the calibration pairs. Calibration runs one pair
per sample (real lengths, no padding: padded positions would distort the activation ranges). The non-quantized
operations run in bf16 where the CPU has it (the plan records what the file was validated with) and in f32
elsewhere.

The result is an OpenVINO IR (``.xml`` + ``.bin``), an engine-specific file: the same recipe as a portable QDQ ONNX
file runs on OpenVINO at the IR's speed and accuracy, but on ONNX Runtime slower than the dynamic int8 crossonnx
already ships for it (benchmarks/graph_formats.py, docs/design/int8-static-ir.md).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import mmap
import os
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.cpu import has_int8_dot_product
from crossonnx.errors import require_module
from crossonnx.exporter.memory import release_memory
from crossonnx.exporter.search import fewest_that_meet
from crossonnx.metrics import logit_agreement

Feeds = list[dict[str, np.ndarray]]
SMOOTH_QUANT_ALPHA = 0.8


@dataclass(frozen=True)
class StaticInt8Target:
    """What the int8 model must reach against the fp32 graph on the calibration pairs."""

    min_spearman: float = 0.9995
    max_rel_error: float = 0.05  # mean |int8 - fp32| logit error / std of the fp32 logits
    max_float_fraction: float = 0.5  # never keep more than this share of the down-projections out of int8


@dataclass
class StaticInt8Plan:
    """How the int8-static file was made; stored in the manifest."""

    scheme: str = "static"
    quantizer: str = ""
    preset: str = "mixed (symmetric weights per channel, asymmetric activations per tensor)"
    smooth_quant_alpha: float = SMOOTH_QUANT_ALPHA
    calibration_pairs: int = 0
    inference_precision: str = "f32"  # what the non-quantized operations run in
    float_matmuls: list[str] = field(default_factory=list)  # weight MatMuls left out of int8 (head included)
    float_attention_matmuls: list[str] = field(default_factory=list)  # query x key and probabilities x value
    quantized_matmuls: int = 0
    search: list[dict[str, Any]] = field(default_factory=list)
    met_target: bool | None = None
    overflow_fix: str = "first_layer"  # NNCF's fix for saturating int8 sums: "enable" on CPUs without VNNI / AMX


def overflow_fix() -> str:
    """NNCF's overflow fix for this machine's int8 kernels. Without an int8 dot-product instruction (VNNI, AMX) the
    CPU sums u8 x s8 products in saturating 16-bit lanes; 7-bit weights on every layer keep those sums in range, at
    a small cost in precision that CPUs with VNNI need not pay (docs/design/int8-static-recipe.md)."""
    return "first_layer" if has_int8_dot_product() else "enable"


def _openvino() -> Any:
    return require_module("openvino", "openvino", what="OpenVINO's int8 precisions (int8-static, int8-dynamic)")


def _nncf() -> Any:
    return require_module("nncf", "export", "nncf", "OpenVINO's int8 precisions (int8-static, int8-dynamic)")


def weight_matmuls(model: Any) -> list[Any]:
    """MatMuls with a constant weight, in execution order."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input(1).get_source_output().get_node()
        if weight.get_type_name() in ("Constant", "Convert"):
            out.append(op)
    return out


def attention_matmuls(model: Any) -> list[str]:
    """MatMuls of two activations (attention's query x key and probabilities x value), in execution order."""
    weights = {op.get_friendly_name() for op in weight_matmuls(model)}
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and op.get_friendly_name() not in weights]


def down_projections(model: Any) -> list[str]:
    """The feed-forward output MatMuls (their input is a GELU), first layer first."""
    return [
        op.get_friendly_name() for op in weight_matmuls(model)
        if op.input(0).get_source_output().get_node().get_type_name() == "Gelu"
    ]


def head_matmuls(model: Any) -> list[str]:
    """The classifier head: the last two weight MatMuls (pooler/dense and classifier/out_proj in every family)."""
    return [op.get_friendly_name() for op in weight_matmuls(model)[-2:]]


def _compile(model: Any, hint: str, threads: int) -> Any:
    ov = _openvino()
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    return ov.Core().compile_model(model, "CPU", config)


def weight_files(graph: Path) -> list[Path]:
    """The files OpenVINO maps for ``graph``'s weights: an IR's ``.bin``, an ONNX graph's external data files."""
    if graph.suffix == ".xml":
        return [graph.with_suffix(".bin")]
    import onnx

    structure = onnx.load(str(graph), load_external_data=False)
    locations = {entry.value for tensor in structure.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    return [graph.parent / location for location in sorted(locations)]


def release_mapped_pages(files: Collection[Path]) -> None:
    """Take this process's resident pages of the read-only shared mappings of ``files`` out of its resident set
    (Linux; elsewhere nothing).

    OpenVINO maps a graph's weight files rather than reading them, and every page a compile or a transformation
    touched stays resident for as long as the mapping lives: for the whole of an NNCF run, which holds the model it
    was given, all of the fp32 weights, beside the copies the CPU plugin and SmoothQuant make of them. The pages stay
    in the page cache, so whatever still reads them faults them back in without copying; a read-only shared mapping
    holds nothing of its own that dropping could lose.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if not files or advice is None or not sys.platform.startswith("linux"):
        return
    wanted = {os.path.realpath(path) for path in files}
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            ranges = []
            for line in handle:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[1].startswith("r-") and fields[1][3] == "s" \
                        and fields[5].rstrip("\n") in wanted:
                    start, end = (int(bound, 16) for bound in fields[0].split("-"))
                    ranges.append((start, end - start))
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, length in ranges:
        madvise(start, length, advice)


def run_logits(model: Any, feeds: Feeds, hint: str, threads: int = 0) -> np.ndarray:
    """Logits of ``model`` (an OpenVINO model, or the path of a graph file) over ``feeds`` (one pair each), stacked.
    Given a path, the weight pages the compile read are let go before the run: the compiled model holds its own
    copy of most of them."""
    compiled = _compile(str(model) if isinstance(model, Path) else model, hint, threads)
    if isinstance(model, Path):
        release_mapped_pages(weight_files(model))
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    return np.concatenate([np.asarray(request.infer(feed)[output], dtype=np.float32) for feed in feeds])


@contextlib.contextmanager
def _nncf_memory(weights: Collection[Path]) -> Iterator[None]:
    """Bound what an NNCF run on an OpenVINO model holds at once, without changing what it computes:

    - SmoothQuant computes each scaled weight in float64 and converts them all to the weight's float32 only when it
      rewrites the model, so it holds every scaled weight twice, in float64 and float32; here each is converted by
      NNCF's own conversion as it is computed (the same values, a quarter of the memory);
    - before and after each compile for its statistics, the pages of ``weights`` (the mapped files) are let go
      (``release_mapped_pages``): the compile touches those the model still uses again, the others (the original
      weights SmoothQuant replaced) leave memory.

    Both change NNCF's classes for the duration of the block (not thread-safe: one NNCF run at a time, as the export
    runs them); a name this NNCF lacks leaves that part out, costing memory only.
    """
    undo: list[tuple[type, str, Any]] = []
    try:
        from nncf.common.factory import EngineFactory
        from nncf.openvino.graph.model_transformer import OVModelTransformer
        from nncf.quantization.algorithms.smooth_quant.openvino_backend import OVSmoothQuantAlgoBackend
    except ImportError:
        yield
        return
    backend = OVSmoothQuantAlgoBackend
    update = vars(backend).get("weight_update_command")
    convert = getattr(OVModelTransformer, "_convert_to_dtype", None)
    if isinstance(update, staticmethod) and convert is not None and hasattr(backend, "get_weight_tensor_port_id"):

        def weight_update_command(node: Any, graph: Any, value: np.ndarray) -> Any:
            port = backend.get_weight_tensor_port_id(node)
            if node.layer_attributes.constant_attributes[port].get("dtype") == "f32" and value.dtype != np.float32:
                value = convert(value, np.float32)  # what NNCF converts it with when it writes the constant
            return update.__func__(node, graph, value)

        undo.append((backend, "weight_update_command", update))
        backend.weight_update_command = staticmethod(weight_update_command)
    create = vars(EngineFactory).get("create")
    if isinstance(create, staticmethod) and weights:

        def create_engine(model: Any) -> Any:
            release_mapped_pages(weights)
            engine = create.__func__(model)
            release_mapped_pages(weights)
            return engine

        undo.append((EngineFactory, "create", create))
        EngineFactory.create = staticmethod(create_engine)
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def nncf_static_int8(model: Any, feeds: Feeds, keep_float: list[str], weights: Collection[Path] = ()) -> Any:
    """The NNCF recipe of int8-static (above) applied to ``model``, an OpenVINO model or an ONNX ModelProto (which NNCF
    returns as a QDQ ONNX model), with the nodes ``keep_float`` names left in float; ``model`` is not changed.
    ``weights``: the files ``model``'s weights are mapped from, let go of between NNCF's steps (``_nncf_memory``)."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    logging.getLogger("nncf").setLevel(logging.ERROR)
    # NNCF draws its own progress bars (rich, on stdout); the export's step log reports each run instead
    with contextlib.redirect_stdout(io.StringIO()), _nncf_memory(weights):
        return nncf.quantize(
            model.clone() if hasattr(model, "clone") else copy.deepcopy(model),
            nncf.Dataset(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(names=keep_float, validate=False),
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=SMOOTH_QUANT_ALPHA),
                overflow_fix=OverflowFix.ENABLE if overflow_fix() == "enable" else OverflowFix.FIRST_LAYER,
            ),
        )


def _remove_ir(xml: Path) -> None:
    xml.unlink(missing_ok=True)
    xml.with_suffix(".bin").unlink(missing_ok=True)


def quantize_static_int8(
    fp32_graph: Path,
    out_xml: Path,
    feeds: Feeds,
    inference_precision: str,
    target: StaticInt8Target = StaticInt8Target(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``out_xml`` (+ ``.bin``): the fewest down-projections in float that meet ``target``; returns details.

    Memory: the fp32 graph's weights are mapped, not copied, and the pages each step read are let go of after it
    (``release_mapped_pages``); each trial's quantized model is written beside ``out_xml`` and scored from that file,
    and the one kept is renamed to ``out_xml`` at the end, so no quantized model outlives its trial.
    """
    ov = _openvino()
    # one reading for the whole search: nodes the ONNX graph leaves unnamed are named per reading, and the names
    # kept in float (and recorded in the plan) must be those of the model quantized
    model = ov.Core().read_model(str(fp32_graph))
    head, attention, downs = head_matmuls(model), attention_matmuls(model), down_projections(model)
    weights = weight_files(fp32_graph)
    reference = run_logits(fp32_graph, feeds, "f32")
    release_memory()
    plan = StaticInt8Plan(quantizer=f"nncf {metadata.version('nncf')}", calibration_pairs=len(feeds),
                          inference_precision=inference_precision, float_attention_matmuls=attention,
                          overflow_fix=overflow_fix())
    cap = int(len(downs) * target.max_float_fraction)
    ladder = sorted({k for k in (0, 1, 2, 4, 8, 12, 16) if k <= cap} | {cap})  # one quantization per trial
    best: tuple[float, int, Path] | None = None  # the file to keep: the fewest that met, else the best score
    scratches: list[Path] = []

    def trial(keep: int) -> bool:
        nonlocal best
        scratch = out_xml.with_name(f".{out_xml.stem}.trial-{keep}.xml")
        scratches.append(scratch)
        quantized = nncf_static_int8(model, feeds, head + downs[:keep] + attention, weights=weights)
        ov.save_model(quantized, str(scratch), compress_to_fp16=False)
        del quantized
        release_mapped_pages(weights)
        release_memory()
        measured = logit_agreement(run_logits(scratch, feeds, inference_precision), reference)
        met = measured["spearman"] >= target.min_spearman and measured["rel_error"] <= target.max_rel_error
        plan.search.append({"float_down_projections": keep, **measured, "met": met})
        if log:
            log(f"int8-static with {keep} down-projections in float: Spearman {measured['spearman']:.5f}, "
                f"rel. error {measured['rel_error']:.4f}{'  (target met)' if met else ''}")
        score = -1.0 / (1 + keep) if met else (1 - measured["spearman"]) + measured["rel_error"]
        if best is None or score < best[0]:
            if best is not None:
                _remove_ir(best[2])
            best = (score, keep, scratch)  # a met trial always beats one that missed (negative score)
        else:
            _remove_ir(scratch)
        release_memory()
        return met

    try:
        fewest_that_meet(ladder, trial, most_first=True)  # most models miss it even with the most in float
        assert best is not None
        _, keep, kept = best
        os.replace(kept.with_suffix(".bin"), out_xml.with_suffix(".bin"))
        os.replace(kept, out_xml)
    finally:
        for scratch in scratches:  # what an error left behind
            _remove_ir(scratch)
    plan.float_matmuls = head + downs[:keep]
    plan.quantized_matmuls = len(weight_matmuls(model)) - len(plan.float_matmuls)
    plan.met_target = any(step["met"] for step in plan.search)
    return {**asdict(plan), "target": asdict(target), "engine": "openvino",
            "weights_file": out_xml.with_suffix(".bin").name}


# ------------------------------------------------------------------------------------------------- int8-dynamic
# OpenVINO's CPU plugin quantizes a FullyConnected's input at run time, per group of this many values of each token,
# when the weights are stored as int8 (DYNAMIC_QUANTIZATION_GROUP_SIZE). Smaller groups rank closer to PyTorch fp32
# and run slower; int8 weights without run-time quantization are expanded to float and run slower than bf16. 64 keeps
# Spearman above 0.999 with a margin on the real MiniLM (docs/design/int8-dynamic-groups.md).
DYNAMIC_GROUP_SIZE = 64


@dataclass
class DynamicInt8Plan:
    """How the int8-dynamic file was made; stored in the manifest."""

    scheme: str = "dynamic"
    quantizer: str = ""
    weights: str = "int8, asymmetric, per output channel"
    activations: str = f"int8 per group of {DYNAMIC_GROUP_SIZE} values of each token, quantized at run time"
    group_size: int = DYNAMIC_GROUP_SIZE
    inference_precision: str = "f32"  # what the other operations run in
    float_weights: list[str] = field(default_factory=list)  # left in float: embeddings and the classifier head
    int8_matmuls: int = 0
    openvino_config: dict[str, str] = field(
        default_factory=lambda: {"DYNAMIC_QUANTIZATION_GROUP_SIZE": str(DYNAMIC_GROUP_SIZE)}
    )


def embedding_gathers(model: Any) -> list[str]:
    """Gathers that read a constant 2-D table (token, position and type embeddings)."""
    return [
        op.get_friendly_name() for op in model.get_ordered_ops()
        if op.get_type_name() == "Gather"
        and op.input(0).get_source_output().get_node().get_type_name() == "Constant"
        and len(op.input(0).get_partial_shape()) == 2
    ]


def compress_dynamic_int8(fp32_graph: Path, out_xml: Path, inference_precision: str) -> dict[str, Any]:
    """Write ``out_xml`` (+ ``.bin``): the fp32 graph with int8 weights in every encoder MatMul; returns details.

    The embeddings and the classifier head stay float: int8 there costs accuracy and saves no time. On a CPU whose
    OpenVINO build has no dynamic quantization kernels the int8 weights are expanded at run time instead, which is
    slower and no less accurate.
    """
    ov, nncf = _openvino(), _nncf()
    model = ov.Core().read_model(str(fp32_graph))
    keep_float = embedding_gathers(model) + head_matmuls(model)
    int8_matmuls = len(weight_matmuls(model)) - len(head_matmuls(model))
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        compressed = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT8_ASYM,
            ignored_scope=nncf.IgnoredScope(names=keep_float, validate=False),
        )
    plan = DynamicInt8Plan(quantizer=f"nncf {metadata.version('nncf')}", inference_precision=inference_precision,
                           float_weights=keep_float, int8_matmuls=int8_matmuls)
    release_mapped_pages(weight_files(fp32_graph))  # the fp32 weights compressed: writing reads only the others
    ov.save_model(compressed, str(out_xml), compress_to_fp16=False)
    return {**asdict(plan), "engine": "openvino", "weights_file": out_xml.with_suffix(".bin").name}
