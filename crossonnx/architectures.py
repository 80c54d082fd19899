"""What crossonnx knows about each model family, in one table keyed by the config's ``model_type``.

A new family is one entry here: the inputs its model reads, where its learned positions start, whether its
classifier reads the first position only (the exporter then computes the last layer for that position alone),
which ONNX Runtime optimizer fuses its graph, and the tiny random-weight checkpoints the tests build of it.
A ``model_type`` the table does not list still exports: plain graph, no pruning, the tokenizer's inputs.

Plain data (no torch, no transformers), like optimum's per-architecture exporter configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Every graph input crossonnx can build, in the order the graph takes them
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BERT_INPUTS = TOKEN_INPUTS
ROBERTA_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class TinyCheckpoint:
    """A few-hundred-kB random-weight member of a family: a seed config with a smaller shape."""

    name: str  # what build_tiny calls it
    seed_config: str  # crossonnx/checkpoints/configs/<seed_config>.json
    overrides: Mapping[str, int]


@dataclass(frozen=True)
class Architecture:
    """One family's facts, as the exporter and the synthetic checkpoints use them."""

    model_type: str
    # the token inputs the model reads (a graph of this family that lacks one the tokenizer gives is a bug)
    inputs: tuple[str, ...]
    # learned positions start after the padding index: usable tokens = max_position_embeddings - pad_token_id - 1
    position_offset: bool = False
    # the sequence classifier that reads only position 0 of the last layer, with BERT's layer layout
    cls_head: str | None = None
    # onnxruntime.transformers optimizer model_type that fuses this family's graph (None: left plain)
    fusion: str | None = None
    # the kind of tokenizer its checkpoints ship; synthetic checkpoints train one of "wordpiece" or "bpe"
    tokenizer: str = "wordpiece"
    tiny: tuple[TinyCheckpoint, ...] = field(default=())


def _tiny(name: str, seed_config: str, **overrides: int) -> TinyCheckpoint:
    return TinyCheckpoint(name, seed_config, MappingProxyType(overrides))


_TABLE = (
    Architecture(
        "bert", BERT_INPUTS, cls_head="BertForSequenceClassification", fusion="bert",
        tiny=(_tiny("bert", "ms-marco-TinyBERT-L-2", hidden_size=64, num_attention_heads=4, intermediate_size=128),),
    ),
    Architecture(
        "electra", BERT_INPUTS, cls_head="ElectraForSequenceClassification", fusion="bert",
        tiny=(_tiny("electra", "ms-marco-electra-base", hidden_size=64, embedding_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128),),
    ),
    Architecture(
        "roberta", ROBERTA_INPUTS, position_offset=True, cls_head="RobertaForSequenceClassification",
        fusion="bert", tokenizer="bpe",
        tiny=(
            _tiny("roberta", "stsb-roberta-base", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128),
            _tiny("distilroberta", "stsb-distilroberta-base", hidden_size=96, num_hidden_layers=3,
                  num_attention_heads=6, intermediate_size=192),
        ),
    ),
    Architecture(
        "xlm-roberta", ROBERTA_INPUTS, position_offset=True, cls_head="XLMRobertaForSequenceClassification",
        fusion="bert", tokenizer="unigram",
    ),
    Architecture(
        "camembert", ROBERTA_INPUTS, position_offset=True, cls_head="CamembertForSequenceClassification",
        fusion="bert", tokenizer="unigram",
    ),
    Architecture("longformer", ROBERTA_INPUTS, position_offset=True, tokenizer="bpe"),
    # reads position 0 too, but its layers lack BERT's layout (no last-layer pruning); no fusion table
    Architecture("distilbert", ROBERTA_INPUTS),
)
ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType({arch.model_type: arch for arch in _TABLE})
TINY_CHECKPOINTS: Mapping[str, TinyCheckpoint] = MappingProxyType(
    {tiny.name: tiny for arch in _TABLE for tiny in arch.tiny}
)


def architecture(model_type: str) -> Architecture:
    """The table's entry for ``model_type``; for a family it does not list, one that assumes nothing."""
    return ARCHITECTURES.get(model_type) or Architecture(model_type, inputs=())
