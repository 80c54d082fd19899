"""The runtime options every command that scores pairs takes (predict, rank, warmup, serve, score-file, bench)."""

from __future__ import annotations

import argparse
from typing import Any

from crossonnx.engines import PROVIDERS
from crossonnx.errors import InvalidOptionError, MovedArgumentError
from crossonnx.levels import LEVELS
from crossonnx.long_documents import AGGREGATES, DEFAULT_CAP_WINDOWS, MODES, ON_CAPPED, LongDocuments
from crossonnx.manifest import PRECISIONS
from crossonnx.precisions import DEFAULT_PRECISION
from crossonnx.tokenization import TRUNCATION_DIRECTIONS
from crossonnx.tune import DEFAULT_WORKLOAD, WORKLOADS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_runtime_args(
    parser: argparse.ArgumentParser, model_dir: bool = True, workload: str = DEFAULT_WORKLOAD,
    workload_help: str | None = None,
) -> None:
    """``model_dir`` (optional), ``--precision``, ``--provider``, ``--threads`` and ``--workload`` with the runtime's
    defaults; a command that tunes for a load of its own (serve) gives ``--workload`` its default and help."""
    if model_dir:
        parser.add_argument("model_dir", help="an exported model folder")
    parser.add_argument("--precision", default=DEFAULT_PRECISION,
                        help=f"a quality level ({', '.join(LEVELS)}: the fastest variant here that meets it) or an "
                             f"exported precision ({', '.join(PRECISIONS)}) (default {DEFAULT_PRECISION})")
    parser.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS],
                        help="engine: cpu (ONNX Runtime), openvino, cuda, tensorrt; auto: TensorRT > CUDA > "
                             "ONNX Runtime CPU, OpenVINO for bf16 and its int8s (default auto)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all CPUs)")
    parser.add_argument("--workload", default=workload, choices=WORKLOADS,
                        help=workload_help or "which `crossonnx tune` measurement a level and provider auto follow, "
                                              f"where one exists for this folder and machine (default {workload})")


def runtime_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``CrossEncoder`` keyword arguments ``add_runtime_args`` declared."""
    return {"precision": args.precision, "provider": args.provider, "threads": args.threads,
            "workload": args.workload}


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def add_long_document_args(parser: argparse.ArgumentParser) -> None:
    """``--long-documents`` and the chunk options (crossonnx.long_documents), for every command that scores."""
    group = parser.add_argument_group("long documents")
    group.add_argument("--long-documents", default="truncate", choices=MODES,
                       help="truncate: score what fits in the max length (default); chunk: score the second text in "
                            "token windows and aggregate them")
    group.add_argument("--chunk-tokens", type=positive_int, default=None,
                       help="chunk: document tokens per window (default: what fits beside the query)")
    group.add_argument("--chunk-overlap", type=_non_negative_int, default=None,
                       help="chunk: tokens consecutive windows share (default: a quarter of the window)")
    group.add_argument("--aggregate", default="max", choices=AGGREGATES,
                       help="chunk: a document's score from its window scores (default max)")
    group.add_argument("--max-document-tokens", type=positive_int, default=None,
                       help="chunk: most document tokens read per pair, the first ones (default: what "
                            f"{DEFAULT_CAP_WINDOWS} full-size windows hold beside the query)")
    group.add_argument("--on-capped", default="raise", choices=ON_CAPPED,
                       help="chunk: a document longer than the cap: raise (default: an error naming it, before "
                            "anything is scored) or flag (score its first tokens and mark it capped)")
    group.add_argument("--max-chunks", type=positive_int, default=None, help=argparse.SUPPRESS)  # refused below
    group.add_argument("--truncation-direction", default=None, choices=TRUNCATION_DIRECTIONS,
                       help="which end truncation cuts (default: the model's side, normally right)")


def long_document_options(args: argparse.Namespace) -> LongDocuments:
    """The one ``LongDocuments`` the flags of ``add_long_document_args`` stand for; a rule it breaks (a chunk option
    without ``--long-documents chunk``) is an ``InvalidOptionError`` naming the flag."""
    if args.max_chunks is not None:
        tokens = f"{args.max_chunks * args.chunk_tokens}" if args.chunk_tokens else "<tokens>"
        raise MovedArgumentError(
            f"--max-chunks is gone: the cap is in document tokens now (a count of windows let small windows read less "
            f"of a document); pass --max-document-tokens {tokens}, or leave it out for {DEFAULT_CAP_WINDOWS} "
            "full-size windows' tokens"
        )
    try:
        return LongDocuments(
            args.long_documents, chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap,
            aggregate=args.aggregate, max_document_tokens=args.max_document_tokens, on_capped=args.on_capped,
            truncation_direction=args.truncation_direction,
        )
    except InvalidOptionError as exc:
        flag = "--" + ("long-documents" if exc.field == "mode" else exc.field.replace("_", "-"))
        rule = exc.rule.replace('mode "chunk"', "--long-documents chunk")
        got = f", got {exc.value}" if exc.has_value else ""
        raise InvalidOptionError(exc.field, exc.rule, message=f"{flag} {rule}{got}") from None
