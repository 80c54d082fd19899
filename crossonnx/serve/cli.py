"""Command-line registration for `crossonnx serve` (argparse only; the ASGI stack is imported when run).

Before loading its model, ``serve`` measures the folder's variants on this machine (``crossonnx tune``) wherever the
choice is open (a level, or provider auto with more than one engine for the precision) and no measurement for this
folder, machine, thread count and library versions is stored; ``--no-tune`` opts out, ``--tune`` measures even where
nothing is left to choose (the measured token budget then still applies).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math

from crossonnx.errors import CrossOnnxError, install_command, require_module
from crossonnx.runtime_args import add_runtime_args, positive_int, runtime_kwargs
from crossonnx.serve.limits import ServeLimits
from crossonnx.serve.security import API_KEY_ENV, resolve_api_key
from crossonnx.tune import DEFAULT_SECONDS

SERVE_EXTRA_HINT = install_command("serve")
# What serve tunes for: a rerank request scores a query with all its documents in one call, and queued requests merge
# into one call up to --max-batch-pairs, so the server's calls are multi-pair calls whose pairs/s sets both a
# request's time and the load it bears; batch-1 latency describes clients that send one pair per request.
SERVE_WORKLOAD = "throughput"
SERVE_WORKLOAD_HELP = (
    "what tuning optimizes, and which measurement a level and provider auto follow: throughput (pairs/s; default, "
    "since a rerank request scores its documents together and queued requests merge into one call up to "
    "--max-batch-pairs, so pairs/s sets both a request's time and the load the server bears) or latency (p50 of "
    "one-pair calls: for clients that send one pair per request)"
)
log = logging.getLogger("crossonnx.serve")


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


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _about(seconds: float) -> str:
    return "about a minute" if round(seconds) == 60 else f"about {seconds:g} s"


def tune_before_serving(args: argparse.Namespace) -> None:
    """Measure the folder's variants (``crossonnx tune``) before the encoder loads, where its choice is open or
    ``--tune`` asks, unless a measurement is stored (the encoder then logs which one it follows). A measurement that
    fails is a warning and the static rules decide; with ``--tune`` it is an error."""
    if args.tune is False:
        return
    from crossonnx.engines import default_threads
    from crossonnx.levels import Machine
    from crossonnx.manifest import load_manifest
    from crossonnx.tune import load_tuned, open_choice, runnable_variants, tune

    manifest = load_manifest(args.model_dir)
    machine = Machine.probe()
    why = open_choice(manifest, args.precision, args.provider, machine)
    if why is None and not args.tune:
        return  # the precision and provider are fixed, or one variant is all there is
    threads = default_threads() if args.threads is None else args.threads
    if load_tuned(manifest, threads) is not None:
        return
    count = len(runnable_variants(manifest, machine))
    log.info("tuning for %s before serving, %s: %s, so the %d variants of this folder this machine runs are measured "
             "(once per folder, machine and upgrade; --no-tune skips it: the static rules then decide)",
             args.workload, _about(args.tune_seconds), why or "--tune", count)
    try:
        result = tune(args.model_dir, seconds=args.tune_seconds, threads=threads, log=log.info)
    except Exception as exc:  # serving by the static rules beats not serving
        if args.tune:
            raise
        log.warning("tuning failed (%s: %s); serving by the static rules", type(exc).__name__, exc)
        return
    log.info("tuned: %d variants measured in %.0f s, stored in %s", len(result.variants), result.seconds, result.path)


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
    tune_before_serving(args)
    encoder = CrossEncoder(
        args.model_dir, **runtime_kwargs(args), max_length=args.max_length, token_budget=token_budget
    )
    if limits.max_texts_per_request > limits.max_queue_pairs:
        log.warning(
            "--max-texts-per-request %d is over --max-queue-pairs %d: requests between the two are refused (413)",
            limits.max_texts_per_request, limits.max_queue_pairs,
        )
    if api_key is None and not _is_loopback(args.host):
        log.warning(
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
    add_runtime_args(p, workload=SERVE_WORKLOAD, workload_help=SERVE_WORKLOAD_HELP)
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="before serving, measure every variant of the folder on this machine (crossonnx tune) unless "
                        "a measurement for this folder, machine, thread count and library versions is stored; a level "
                        "and provider auto then take the fastest for --workload. Default: tune when the choice is "
                        "open (a level, or provider auto with more than one engine for the precision), not when "
                        "--precision and --provider fix the variant; --tune: also then (for the measured token "
                        "budget); --no-tune: never measure (a stored measurement is still followed; without one the "
                        "static rules decide)")
    p.add_argument("--tune-seconds", type=_positive_seconds, default=DEFAULT_SECONDS,
                   help=f"about how long tuning measures, loading included (default {DEFAULT_SECONDS:g})")
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
