"""Command-line registration for `crossonnx serve` (argparse only; the ASGI stack is imported when run)."""

from __future__ import annotations

import argparse
import ipaddress
import logging

from crossonnx.errors import CrossOnnxError, install_command, require_module
from crossonnx.runtime_args import add_runtime_args, positive_int, runtime_kwargs
from crossonnx.serve.limits import ServeLimits
from crossonnx.serve.security import API_KEY_ENV, resolve_api_key

SERVE_EXTRA_HINT = install_command("serve")


def _require_serve_extra() -> None:
    """Fail with the install command when starlette, uvicorn or prometheus-client is missing."""
    for module, distribution in (("starlette", "starlette"), ("uvicorn", "uvicorn"),
                                 ("prometheus_client", "prometheus-client")):
        require_module(module, "serve", distribution, "crossonnx serve")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run(args: argparse.Namespace) -> int:
    _require_serve_extra()
    try:
        api_key = resolve_api_key(args.api_key)
    except ValueError as exc:
        raise CrossOnnxError(str(exc)) from None
    from crossonnx.encoder import CrossEncoder
    from crossonnx.serve.app import create_app
    from crossonnx.serve.server import make_server

    level = "DEBUG" if args.log_level == "trace" else args.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s: %(message)s")
    limits = ServeLimits(
        max_batch_pairs=args.max_batch_pairs,
        max_queue_pairs=args.max_queue_pairs,
        max_texts_per_request=args.max_texts_per_request,
        max_text_chars=args.max_text_chars,
        max_body_bytes=args.max_body_bytes,
        drain_timeout=args.drain_timeout,
    )
    token_budget: int | str | None = "auto" if args.token_budget is None else (args.token_budget or None)  # 0: none
    if args.tune:
        from crossonnx.tune import ensure_tuned

        ensure_tuned(args.model_dir, threads=args.threads, log=logging.getLogger("crossonnx.serve").info)
    encoder = CrossEncoder(
        args.model_dir, **runtime_kwargs(args), max_length=args.max_length, token_budget=token_budget
    )
    if limits.max_texts_per_request > limits.max_queue_pairs:
        logging.getLogger("crossonnx.serve").warning(
            "--max-texts-per-request %d is over --max-queue-pairs %d: requests between the two are refused (413)",
            limits.max_texts_per_request, limits.max_queue_pairs,
        )
    if api_key is None and not _is_loopback(args.host):
        logging.getLogger("crossonnx.serve").warning(
            "serving on %s without an API key: anyone who reaches the port can use it (set $%s or --api-key)",
            args.host, API_KEY_ENV,
        )
    app = create_app(encoder, limits, api_key=api_key)
    server = make_server(app, host=args.host, port=args.port, log_level=args.log_level)
    server.run()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand to the crossonnx parser."""
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: TEI /rerank, Cohere /v1/rerank and /v2/rerank, /predict, /metrics (needs "
             "crossonnx[serve])",
        description="An HTTP rerank service with dynamic batching across requests. Needs: " + SERVE_EXTRA_HINT,
    )
    add_runtime_args(p)
    p.add_argument("--tune", action="store_true",
                   help="before serving, measure every variant of the folder on this machine (crossonnx tune, about "
                        "a minute) unless a measurement for it is stored; levels and provider auto then follow it")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--max-length", type=int, default=None, help="truncate pairs to N tokens (default: the model's)")
    p.add_argument("--token-budget", type=_non_negative, default=None,
                   help="padded tokens per model call (default: the engine's, 2048 on ONNX Runtime, 8192 on OpenVINO; "
                        "0: no budget, 32 rows a call)")
    defaults = ServeLimits()
    p.add_argument("--max-batch-pairs", type=positive_int, default=defaults.max_batch_pairs,
                   help="most pairs merged from queued requests into one model call (default %(default)s)")
    p.add_argument("--max-queue-pairs", type=positive_int, default=defaults.max_queue_pairs,
                   help="pairs waiting for the model beyond which requests get 429 (default %(default)s)")
    p.add_argument("--max-texts-per-request", type=positive_int, default=defaults.max_texts_per_request,
                   help="texts, documents or pairs per request; more is a 413 (default %(default)s)")
    p.add_argument("--max-text-chars", type=positive_int, default=defaults.max_text_chars,
                   help="characters per text; longer is a 413 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes,
                   help="bytes per request body; more is a 413, answered before reading it (default %(default)s)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (default: ${API_KEY_ENV} "
                        "if set, which keeps the key out of the process list; else no key)")
    p.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout,
                   help="seconds a SIGTERM/SIGINT waits for requests in flight (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"],
                   help="log level (default info; debug adds the access log)")
    p.set_defaults(run=_run)
