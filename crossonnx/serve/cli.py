"""Command-line registration for `crossonnx serve` (argparse only; the ASGI stack is imported when run)."""

from __future__ import annotations

import argparse
import logging

from crossonnx.errors import CrossOnnxError

SERVE_EXTRA_HINT = 'pip install "crossonnx[serve]"'


def _require_serve_extra() -> None:
    """Fail with the install command when starlette, uvicorn or prometheus-client is missing."""
    import importlib

    missing = []
    for module, distribution in (("starlette", "starlette"), ("uvicorn", "uvicorn"),
                                 ("prometheus_client", "prometheus-client")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise CrossOnnxError(f"crossonnx serve needs {', '.join(missing)}, which are not installed: {SERVE_EXTRA_HINT}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _run(args: argparse.Namespace) -> int:
    _require_serve_extra()
    from crossonnx.encoder import DEFAULT_TOKEN_BUDGET, CrossEncoder
    from crossonnx.serve.app import create_app
    from crossonnx.serve.limits import ServeLimits
    from crossonnx.serve.server import make_server

    level = "DEBUG" if args.log_level == "trace" else args.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s: %(message)s")
    limits = ServeLimits(
        max_batch_pairs=args.max_batch_pairs,
        max_queue_pairs=args.max_queue_pairs,
        max_texts_per_request=args.max_texts_per_request,
        max_text_chars=args.max_text_chars,
        drain_timeout=args.drain_timeout,
    )
    if args.token_budget is None:
        token_budget: int | None = DEFAULT_TOKEN_BUDGET
    else:
        token_budget = args.token_budget or None  # 0: no token budget
    encoder = CrossEncoder(
        args.model_dir,
        precision=args.precision,
        provider=args.provider,
        max_length=args.max_length,
        threads=args.threads,
        token_budget=token_budget,
    )
    if limits.max_texts_per_request > limits.max_queue_pairs:
        logging.getLogger("crossonnx.serve").warning(
            "--max-texts-per-request %d is over --max-queue-pairs %d: requests between the two are refused (413)",
            limits.max_texts_per_request, limits.max_queue_pairs,
        )
    server = make_server(create_app(encoder, limits), host=args.host, port=args.port, log_level=args.log_level)
    server.run()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand to the crossonnx parser."""
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: TEI /rerank, Cohere /v1/rerank, /predict, /metrics (needs crossonnx[serve])",
        description="An HTTP rerank service with dynamic batching across requests. Needs: " + SERVE_EXTRA_HINT,
    )
    p.add_argument("model_dir", help="an exported model folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or int8 (default fp32)")
    p.add_argument("--provider", default="auto", help="auto, cpu, cuda or tensorrt (default auto)")
    p.add_argument("--threads", type=_positive, default=None, help="intra-op threads (default: all CPUs)")
    p.add_argument("--max-length", type=int, default=None, help="truncate pairs to N tokens (default: the model's)")
    p.add_argument("--token-budget", type=_non_negative, default=None,
                   help="padded tokens per model call (default 2048; 0: no budget, 32 rows per call)")
    p.add_argument("--max-batch-pairs", type=_positive, default=256,
                   help="most pairs merged from queued requests into one model call (default 256)")
    p.add_argument("--max-queue-pairs", type=_positive, default=4096,
                   help="pairs waiting for the model beyond which requests get 429 (default 4096)")
    p.add_argument("--max-texts-per-request", type=_positive, default=1000,
                   help="texts, documents or pairs per request; more is a 413 (default 1000)")
    p.add_argument("--max-text-chars", type=_positive, default=20_000,
                   help="characters per text; longer is a 413 (default 20000)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds a SIGTERM/SIGINT waits for requests in flight (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"],
                   help="log level (default info; debug adds the access log)")
    p.set_defaults(run=_run)
