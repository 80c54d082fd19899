"""PyTorch checkpoint -> plain fp32 ONNX graph (TorchScript exporter, eager attention, explicit opset)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from crossonnx.architectures import TOKEN_INPUTS, architecture
from crossonnx.errors import ExportError
from crossonnx.exporter.graph_files import WeightsFile, data_file


def quiet_libraries() -> None:
    """No per-weight progress bars or tracer chatter in the export log."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class LoadedCheckpoint:
    config: Any
    tokenizer: Any
    path: Path
    trust_remote_code: bool = False
    allow_pickle: bool = False
    model: torch.nn.Module | None = None  # loaded by load_model, for the graph export only

    @property
    def max_tokens(self) -> int:
        """Tokens the position table can hold (RoBERTa: 514 positions, 512 usable)."""
        positions = int(getattr(self.config, "max_position_embeddings", 512))
        if architecture(self.config.model_type).position_offset:
            positions -= int(self.config.pad_token_id) + 1
        return positions

    def load_model(self) -> torch.nn.Module:
        """The checkpoint as a sequence classifier with eager attention (it exports to a fusable graph)."""
        if self.model is None:
            try:
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    self.path,
                    attn_implementation="eager",
                    trust_remote_code=self.trust_remote_code,
                    use_safetensors=None if self.allow_pickle else True,
                    dtype=torch.float32,
                ).eval()
            except ValueError as exc:
                raise ExportError(
                    f"{self.path} cannot be loaded as a sequence-classification cross-encoder: {exc}"
                ) from None
        return self.model


def load_checkpoint(
    path: Path, trust_remote_code: bool = False, allow_pickle: bool = False, with_model: bool = True
) -> LoadedCheckpoint:
    """The checkpoint's config and tokenizer, and its model unless ``with_model`` is False (the exporter loads it
    only for the graph export, after sentence-transformers' own copy has scored the validation pairs and gone:
    one copy of the weights in memory at a time)."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not trust_remote_code and type(config) not in AutoModelForSequenceClassification._model_mapping:
        raise ExportError(
            f"{path} cannot be loaded as a sequence-classification cross-encoder: transformers has no sequence "
            f"classifier for model type {config.model_type!r}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ExportError(
            f"the tokenizer of {path} has no Rust (tokenizers) backend, which the runtime needs; "
            "save a tokenizer.json with the checkpoint"
        )
    checkpoint = LoadedCheckpoint(config=config, tokenizer=tokenizer, path=Path(path),
                                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if with_model:
        checkpoint.load_model()
    return checkpoint


def graph_input_names(checkpoint: LoadedCheckpoint) -> list[str]:
    """The inputs sentence-transformers feeds: what the tokenizer returns, in a fixed order."""
    names = list(checkpoint.tokenizer.model_input_names)
    unknown = [name for name in names if name not in TOKEN_INPUTS]
    if unknown:
        raise ExportError(f"the tokenizer returns inputs crossonnx does not handle: {unknown}")
    return [name for name in TOKEN_INPUTS if name in names]


class _ClsOnlyLastLayer(torch.nn.Module):
    """The last encoder layer computed for the first position only.

    The classification heads above read nothing but position 0 of the last layer, so its queries, attention
    output, feed-forward and layer norms are needed for that position alone (keys and values still come from
    every token). The scores are unchanged; the last layer costs about a sixth of a full one.
    """

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        attention = self.layer.attention
        heads = attention.self
        batch = hidden_states.shape[0]
        size = heads.attention_head_size
        first = hidden_states[:, :1]
        query = heads.query(first).view(batch, 1, -1, size).transpose(1, 2)
        key = heads.key(hidden_states).view(batch, -1, heads.num_attention_heads, size).transpose(1, 2)
        value = heads.value(hidden_states).view(batch, -1, heads.num_attention_heads, size).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(2, 3)) * heads.scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                attention_mask = torch.zeros_like(attention_mask, dtype=scores.dtype).masked_fill(
                    ~attention_mask, torch.finfo(scores.dtype).min
                )
            scores = scores + attention_mask[:, :, :1]
        context = torch.matmul(torch.softmax(scores, dim=-1), value).transpose(1, 2).reshape(batch, 1, -1)
        return self.layer.feed_forward_chunk(attention.output(context, first))


def supports_cls_pruning(model: torch.nn.Module) -> bool:
    """True when the classifier reads only position 0 and the layers have the BERT layout."""
    if type(model).__name__ != architecture(model.config.model_type).cls_head:
        return False
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not layers:
        return False
    last = layers[-1]
    needed = ("attention", "feed_forward_chunk")
    return all(hasattr(last, n) for n in needed) and all(
        hasattr(last.attention.self, n) for n in ("query", "key", "value", "scaling", "attention_head_size")
    )


@contextmanager
def cls_only_last_layer(model: torch.nn.Module):
    """Temporarily swap the last encoder layer for its first-position-only version."""
    layers = model.base_model.encoder.layer
    original = layers[-1]
    layers[-1] = _ClsOnlyLastLayer(original)
    try:
        yield
    finally:
        layers[-1] = original


class _LogitsOnly(torch.nn.Module):
    """Positional tensors -> logits, so the graph has exactly the inputs we name."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=True).logits


def dummy_inputs(checkpoint: LoadedCheckpoint, names: list[str]) -> tuple[torch.Tensor, ...]:
    """A padded batch of two, so that masking paths are traced."""
    generator = torch.Generator().manual_seed(0)
    vocab = int(checkpoint.config.vocab_size)
    pad = int(checkpoint.tokenizer.pad_token_id or 0)
    ids = torch.randint(5, max(6, min(vocab, 1000)), (2, 16), generator=generator)
    mask = torch.ones(2, 16, dtype=torch.int64)
    ids[1, 12:] = pad
    mask[1, 12:] = 0
    types = torch.zeros(2, 16, dtype=torch.int64)
    if int(getattr(checkpoint.config, "type_vocab_size", 1)) > 1:
        types[:, 8:] = 1
        types[1, 12:] = 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return tuple(tensors[name] for name in names)


def export_plain_graph(
    checkpoint: LoadedCheckpoint, names: list[str], out_path: Path, opset: int, prune_last_layer: bool = True
) -> bool:
    """Write the unfused fp32 graph with dynamic batch and sequence axes, its weights in ``NAME.data`` beside it
    (``graph_files.data_file``); True if the last layer was pruned."""
    model = checkpoint.load_model()
    wrapper = _LogitsOnly(model, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    pruned = prune_last_layer and supports_cls_pruning(model)
    pruning = cls_only_last_layer(model) if pruned else nullcontext()
    with torch.no_grad(), warnings.catch_warnings(), pruning, folded_parameters() as parameters:
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            wrapper,
            dummy_inputs(checkpoint, names),
            str(out_path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            export_params=False,  # the weights are written below, one at a time
            dynamo=False,
        )
    write_parameters(out_path, parameters, names)
    del parameters
    graph_inputs = exported_input_names(out_path)
    if not graph_inputs or graph_inputs != [name for name in names if name in graph_inputs]:
        raise ExportError(f"the exported graph takes {graph_inputs}, expected {names}")
    family = architecture(checkpoint.config.model_type)
    dropped = [name for name in names if name in family.inputs and name not in graph_inputs]
    if dropped:  # e.g. a BERT graph without token_type_ids would score pairs differently from PyTorch
        raise ExportError(
            f"the exported graph lacks {dropped}, which a {family.model_type} model reads; its scores would differ "
            "from sentence-transformers"
        )
    return pruned


# The TorchScript exporter builds the whole model as one protobuf in memory, serializes it and hands the bytes to
# Python, then parses them again: with its parameters and their constant-folded copies alive, a large model's export
# peaked at over four times its weights. Exporting the graph without parameters and writing the folded parameters
# ourselves, one at a time into the weights file the later passes read, leaves the folding's own copies as the peak.
_TORCHSCRIPT_EXPORTER = ("torch.onnx._internal.torchscript_exporter.utils", "torch.onnx.utils")  # torch >=2.9, older


@contextmanager
def folded_parameters() -> Iterator[dict[str, torch.Tensor]]:
    """The parameters of the graph the TorchScript exporter traces inside this block, after constant folding (a
    weight's folded transpose included), by the names the graph gives them."""
    for name in _TORCHSCRIPT_EXPORTER:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_model_to_graph"):
            break
    else:
        raise ExportError(
            f"this torch {torch.__version__} has no TorchScript exporter crossonnx knows; install the torch version "
            "the export extra names: pip install \"crossonnx[export]\""
        )
    captured: dict[str, torch.Tensor] = {}
    original = module._model_to_graph

    def model_to_graph(*args: Any, **kwargs: Any) -> Any:
        graph, parameters, outputs = original(*args, **kwargs)
        captured.update(parameters)
        return graph, parameters, outputs

    module._model_to_graph = model_to_graph
    try:
        yield captured
    finally:
        module._model_to_graph = original


def write_parameters(graph_path: Path, parameters: dict[str, torch.Tensor], names: list[str]) -> None:
    """Turn the graph's parameter inputs (every input but the tokenizer's ``names``) into initializers whose values
    go to the graph's weights file one at a time (small ones stay inline)."""
    model = onnx.load(str(graph_path))  # the structure only: it was exported without parameters
    inputs = list(model.graph.input)
    unknown = [value.name for value in inputs if value.name not in names and value.name not in parameters]
    if unknown:
        raise ExportError(f"the exported graph takes inputs that are neither the tokenizer's nor parameters: {unknown}")
    weights_path = data_file(graph_path)
    with open(weights_path, "wb") as handle:
        weights = WeightsFile(handle, weights_path.name)
        for value in inputs:
            if value.name not in names:
                tensor = parameters[value.name].detach().contiguous()
                model.graph.initializer.append(weights.add(value.name, tensor.numpy()))
    del model.graph.input[:]
    model.graph.input.extend(value for value in inputs if value.name in names)
    onnx.save(model, str(graph_path))


def exported_input_names(path: Path) -> list[str]:
    """The graph's inputs: the tokenizer's, less any the model ignores (the tracer drops them; DistilBERT-style
    models ignore token_type_ids, which sentence-transformers passes and the model discards)."""
    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]
