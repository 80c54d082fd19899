"""The runtime options every command that scores pairs takes (predict, rank, warmup, serve, score-file, bench)."""

from __future__ import annotations

import argparse
from typing import Any

from crossonnx.engines import PROVIDERS
from crossonnx.manifest import PRECISIONS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_runtime_args(parser: argparse.ArgumentParser, model_dir: bool = True) -> None:
    """``model_dir`` (optional), ``--precision``, ``--provider`` and ``--threads`` with the runtime's defaults."""
    if model_dir:
        parser.add_argument("model_dir", help="an exported model folder")
    parser.add_argument("--precision", default="fp32",
                        help=f"which exported precision to run: {', '.join(PRECISIONS)} (default fp32)")
    parser.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS],
                        help="engine: cpu (ONNX Runtime), openvino, cuda, tensorrt; auto picks the fastest "
                             "installed one that runs the precision (default auto)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all CPUs)")


def runtime_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``CrossEncoder`` keyword arguments ``add_runtime_args`` declared."""
    return {"precision": args.precision, "provider": args.provider, "threads": args.threads}
