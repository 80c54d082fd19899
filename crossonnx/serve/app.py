"""The Starlette app: TEI ``/rerank``, Cohere ``/v1/rerank`` and ``/v2/rerank``, ``/predict``, ``/health``, ``/info``,
``/metrics``.

Scoring requests are validated here, queued on the ``DynamicBatcher`` (one inference thread; the event loop only
parses, queues and answers) and answered with the model's activation applied exactly as ``CrossEncoder.predict``
applies it, or raw logits with ``raw_scores``. A model output that is not finite (NaN or infinity: e.g. fp16
overflow) is never answered as a score: ``ServeState.score`` turns it into a JSON error naming the precision.
Draining (``ServeState.begin_drain``): new scoring requests get 503 at once, the ones in flight finish. Middleware:
metrics, finishing bodies left unread by an early answer (``body``), the API key (``security``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import crossonnx
from crossonnx import _pipeline
from crossonnx.encoder import CrossEncoder
from crossonnx.long_documents import DocumentCappedError, LongDocuments, PairDetails
from crossonnx.serve.batcher import Draining, DynamicBatcher, QueueFull, RequestTooLarge, Runner
from crossonnx.serve.body import FinishBodyMiddleware, read_body, require_json
from crossonnx.serve.limits import ServeLimits
from crossonnx.serve.metrics import MetricsMiddleware, ServeMetrics
from crossonnx.serve.schema import (
    ApiError,
    CohereRerankRequest,
    LongDocumentRequest,
    RerankRequest,
    ScoreRequest,
    capped_documents,
    cohere_chunks,
    document_token_cap,
    invalid,
    parse_cohere_rerank,
    parse_cohere_v2_rerank,
    parse_json,
    parse_long_documents,
    parse_predict,
    parse_rerank,
    too_large,
)
from crossonnx.serve.security import ApiKeyMiddleware, check_api_key

logger = logging.getLogger("crossonnx.serve")

Pair = tuple[str, str]
SCORING_ENDPOINTS = ("/rerank", "/v1/rerank", "/v2/rerank", "/predict")
ENDPOINTS = (*SCORING_ENDPOINTS, "/health", "/info", "/metrics")
_HTTP_ERROR_TYPES = {404: "NotFound", 405: "MethodNotAllowed"}
LARGE_BODY_BYTES = 1 << 20


def default_runner(
    encoder: CrossEncoder, limits: ServeLimits, on_tokens: Callable[[int], None] | None = None,
    truncation_direction: str | None = None,
) -> Runner:
    """One merged request batch -> ``encoder.logits``: it sorts the pairs by length and cuts model batches by the
    token budget (rows are capped by the merged batch itself; 32 rows when there is no token budget).
    ``on_tokens`` receives each merged batch's token count (after truncation), for metrics.
    ``truncation_direction``: which end over-long pairs lose (default: the model's side)."""
    rows = limits.max_batch_pairs if encoder.token_budget else 32

    def run(pairs: list[Pair]) -> np.ndarray:
        out, stats = _pipeline.logits_and_stats(encoder, pairs, rows, truncation_direction)
        if on_tokens is not None:
            on_tokens(stats.tokens)
        return out

    return run


class ServeState:
    """One model behind one app: encoder, limits, batcher, metrics, and the drain state."""

    def __init__(self, encoder: CrossEncoder, limits: ServeLimits, runner: Runner | None = None):
        self.encoder = encoder
        self.limits = limits
        self.metrics = ServeMetrics()
        self.runner = runner or default_runner(encoder, limits, self.metrics.batch_tokens.observe)
        self.batcher = DynamicBatcher(
            self.runner, limits.max_batch_pairs, limits.max_queue_pairs, on_batch=self.metrics.on_batch
        )
        self.metrics.watch(self.batcher)
        self._direction_runners: dict[str, Runner] = {}  # truncation_direction -> runner, made on first use
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- drain -----------------------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Refuse new scoring requests with 503 from now on (safe to call from any thread)."""
        self.draining = True
        self.metrics.draining.set(1)

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no scoring request is in flight; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def enter(self) -> None:
        """Count a scoring request in, or refuse it with 503 while draining."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            raise ApiError(503, "the server is shutting down; retry on another replica", "Unhealthy")
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.inc()

    def leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()
        if self.inflight == 0:
            self._idle.set()

    # -- scoring ---------------------------------------------------------------------------------------------
    async def score(
        self, request: ScoreRequest, runner: Runner | None = None, owners: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of ``request.pairs`` as ``CrossEncoder.predict`` returns them (or raw logits); ``runner``: see
        ``runner_for``; ``owners``: the request item each pair belongs to (chunk mode's windows), for errors."""
        if not request.truncate:
            loop = asyncio.get_running_loop()
            counts = await loop.run_in_executor(None, _pipeline.token_counts, self.encoder, request.pairs)
            over = [(i, n) for i, n in enumerate(counts) if n > self.encoder.max_length]
            if over:
                index, tokens = over[0]
                where = f"{request.item_field}[{index}]"
                raise too_large(
                    f"{where} is {tokens} tokens with its pair's other text; the model takes at most "
                    f"{self.encoder.max_length} (send \"truncate\": true to truncate it)",
                    where,
                )
        try:
            logits = await self.batcher.submit(request.pairs, runner)
        except QueueFull as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, str(exc), "Overloaded") from None
        except RequestTooLarge as exc:
            self.metrics.rejected.labels("too_large").inc()
            raise too_large(str(exc), request.item_field) from None
        except Draining as exc:
            self.metrics.rejected.labels("draining").inc()
            raise ApiError(503, str(exc), "Unhealthy") from None
        self.metrics.request_pairs.observe(len(request.pairs))
        self.check_finite(logits, request, owners)
        return _pipeline.scores_from_logits(self.encoder, logits, "identity" if request.raw_scores else None)

    def check_finite(self, logits: np.ndarray, request: ScoreRequest, owners: np.ndarray | None) -> None:
        """The one check that no NaN or infinity leaves the server as a score. It reads the model's output (logits),
        before the activation: a sigmoid would turn an overflowed +inf into a plausible 1.0."""
        finite = np.isfinite(logits).reshape(len(logits), -1).all(axis=1)
        if finite.all():
            return
        row = int(np.argmin(finite))
        where = f"{request.item_field}[{int(owners[row]) if owners is not None else row}]"
        precision, provider = self.encoder.precision, self.encoder.provider
        self.metrics.non_finite.inc()
        logger.warning("the model's output for %s is not finite (%s on %s)", where, precision, provider)
        if precision == "fp32":
            fix = ("fp32 is the widest precision crossonnx runs, so the model itself fails on this input; check the "
                   "folder with `crossonnx verify` or re-export it")
        else:
            fix = (f"{precision} arithmetic overflowed on this input; serve the model at fp32: crossonnx serve "
                   '--precision fp32 (or the level exact; precision="exact" in Python)')
        raise ApiError(500, f"the model's output for {where} is not finite (NaN or infinity) at precision "
                            f"{precision} on {provider}; {fix}", "NonFinite", where)

    def runner_for(self, truncation_direction: str | None) -> Runner | None:
        """The batcher runner that truncates from ``truncation_direction`` (None: the default runner)."""
        if truncation_direction is None or truncation_direction == self.encoder.manifest.tokenizer.truncation_side:
            return None
        if truncation_direction not in self._direction_runners:
            self._direction_runners[truncation_direction] = default_runner(
                self.encoder, self.limits, self.metrics.batch_tokens.observe, truncation_direction
            )
        return self._direction_runners[truncation_direction]

    async def score_details(self, request: ScoreRequest, long_request: LongDocumentRequest) -> PairDetails:
        """``request``'s per-pair results under its long-document options, along crossonnx._pipeline's one path:
        plan (off the event loop unless there is nothing to plan), score every planned pair through the batcher,
        aggregate per text. Chunk mode queues every window as a pair; truncate mode adds spans when asked."""
        options = long_request.options
        if options.mode == "chunk" and self.encoder.num_labels != 1:
            raise invalid(
                f"chunking needs a one-label model (a document scores as its best window); this one has "
                f"{self.encoder.num_labels} labels", "long_documents.mode",
            )
        if options.mode == "truncate" and not long_request.return_spans:
            plan = _pipeline.plan(self.encoder, request.pairs, options)  # nothing to tokenize: no thread hop
        else:
            try:
                plan = await asyncio.get_running_loop().run_in_executor(
                    None, _pipeline.plan, self.encoder, request.pairs, options, long_request.return_spans
                )
            except DocumentCappedError as exc:  # on_capped "raise": before anything is scored
                raise capped_documents(exc, request.item_field, long_request.cap_field) from None
        if plan.windows is not None:
            if not request.truncate and plan.query_truncated.any():
                where = f"{request.item_field}[{int(np.argmax(plan.query_truncated))}]"
                raise too_large(
                    f"the query of {where} leaves too little room for a window within the model's "
                    f"{self.encoder.max_length} tokens and would be truncated (send \"truncate\": true to truncate "
                    "it)",
                    where,
                )
            # more windows than texts past the queue: the windows' fault (else the batcher's 413 names the texts)
            if len(plan.pairs) > self.limits.max_queue_pairs and len(plan.pairs) > len(request.pairs):
                raise too_large(
                    f"this request makes {len(plan.pairs)} windows, more than this server queues "
                    f"({self.limits.max_queue_pairs}); send fewer or shorter texts, or lower "
                    f"{long_request.cap_field}",
                    long_request.cap_field,
                )
            request = dataclasses.replace(request, pairs=plan.pairs, truncate=True)
        owners = plan.windows.owners if plan.windows is not None else None
        return plan.finish(await self.score(request, self.runner_for(options.truncation_direction), owners))

    async def cohere_long_documents(self, request: CohereRerankRequest) -> LongDocumentRequest:
        """Cohere's long-document fields beside this request's query: v1's ``max_chunks_per_doc`` (chunk mode over
        that many default windows' tokens), v2's ``max_tokens_per_doc`` (each document's first tokens; 422 when the
        model cannot take that many beside the query). Neither refuses a long document: it is read in part."""
        query = request.pairs[0][0]
        loop = asyncio.get_running_loop()
        if request.max_chunks_per_doc is not None:
            tokens = await loop.run_in_executor(
                None, _pipeline.cap_of_windows, self.encoder, query, request.max_chunks_per_doc
            )
            return cohere_chunks(tokens)
        cap = request.max_tokens_per_doc
        if cap is None:
            return LongDocumentRequest(LongDocuments())
        used = (await loop.run_in_executor(None, _pipeline.token_counts, self.encoder, [(query, "")]))[0]
        room = self.encoder.max_length - used
        if cap > room:
            most = (f"at most {room} document tokens beside this query" if room > 0
                    else "no document tokens beside this query")
            raise invalid(
                f"max_tokens_per_doc is {cap}, but the model takes {most} (its max length is "
                f"{self.encoder.max_length} tokens, of which the query and the special tokens take {used}); "
                "send a smaller value, or leave it out to truncate each document to what fits",
                "max_tokens_per_doc",
            )
        return document_token_cap(cap)

    def require_one_label(self) -> None:
        """Reranking needs a one-label model (the encoder's rule), answered as 422."""
        try:
            _pipeline.check_rankable(self.encoder)
        except ValueError:
            raise invalid(
                f"this model has {self.encoder.num_labels} labels; reranking needs a one-label model: use /predict",
                None,
            ) from None

    def info(self) -> dict[str, Any]:
        return {
            "model": self.encoder.model_dir.name,
            **self.encoder.info(),
            "limits": self.limits.to_dict(),
            "version": crossonnx.__version__,
        }


# -- request plumbing -----------------------------------------------------------------------------------------
def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


Handler = Callable[[ServeState, dict[str, Any]], Awaitable[Any]]


def scoring_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Content type, drain check, in-flight count, body and JSON parsing, and errors as JSON for one scoring
    endpoint."""

    async def endpoint(request: Request) -> Response:
        state: ServeState = request.app.state.serve
        try:
            require_json(request)
            state.enter()
        except ApiError as error:
            return error_response(error)
        try:
            if state.batcher.queued_pairs >= state.limits.max_queue_pairs:  # no room for even one pair: skip the body
                state.metrics.rejected.labels("queue_full").inc()
                raise ApiError(429, "the queue is full; retry later", "Overloaded")
            body = await read_body(request, state.limits.max_body_bytes)
            # parsing a large body takes milliseconds: off the event loop
            data = parse_json(body) if len(body) < LARGE_BODY_BYTES else await asyncio.to_thread(parse_json, body)
            return JSONResponse(await handler(state, data))
        except ApiError as error:
            return error_response(error)
        except Exception:
            logger.exception("%s failed", request.url.path)
            return error_response(ApiError(500, "scoring failed; see the server log", "Backend"))
        finally:
            state.leave()

    return endpoint


# -- endpoints ------------------------------------------------------------------------------------------------
async def rerank(state: ServeState, data: dict[str, Any]) -> list[dict[str, Any]]:
    """TEI: a list of ``{index, score, text?}`` sorted by score, highest first."""
    state.require_one_label()
    request: RerankRequest = parse_rerank(data, state.limits)
    long_request = parse_long_documents(data)
    details = await state.score_details(request, long_request)
    scores = details.scores
    values = scores.tolist()
    out = []
    for index in np.argsort(-scores, kind="stable").tolist():
        item: dict[str, Any] = {"index": index, "score": values[index]}
        if request.return_text:
            item["text"] = request.texts[index]
        if long_request.active:
            item.update(_long_document_fields(details, long_request, index))
        out.append(item)
    return out


def _long_document_fields(details: PairDetails, long_request: LongDocumentRequest, index: int) -> dict[str, Any]:
    """The crossonnx fields of one result: ``chunks`` and ``capped`` in chunk mode, ``span`` when asked."""
    fields: dict[str, Any] = {}
    if long_request.options.mode == "chunk":
        fields["chunks"] = int(details.chunks[index])
        fields["capped"] = bool(details.capped[index])
    if long_request.return_spans:
        fields["span"] = list(details.spans[index])
    return fields


def cohere_answer(
    request: CohereRerankRequest, details: PairDetails, version: str, long_request: LongDocumentRequest
) -> dict[str, Any]:
    """Cohere's response, v1 or v2: ``{"id", "results": [{index, relevance_score, document?}], "meta"}``, the
    results sorted by score (the first ``top_n``). v1 in chunk mode (``max_chunks_per_doc``): each result says its
    ``chunks`` and whether it was ``capped``, and ``meta.warnings`` lists the capped documents."""
    scores = details.scores
    values = scores.tolist()
    chunked = long_request if request.max_chunks_per_doc is not None else None
    results = []
    for index in np.argsort(-scores, kind="stable").tolist()[: request.top_n]:
        item: dict[str, Any] = {"index": index, "relevance_score": values[index]}
        if request.return_documents:
            item["document"] = {"text": request.documents[index]}
        if chunked is not None:
            item.update(_long_document_fields(details, chunked, index))
        results.append(item)
    search_units = math.ceil(len(request.documents) / 100)
    meta: dict[str, Any] = {"api_version": {"version": version}, "billed_units": {"search_units": search_units}}
    if chunked is not None and details.capped.any():
        capped = np.flatnonzero(details.capped).tolist()
        meta["warnings"] = [
            f"documents {capped} are longer than max_chunks_per_doc={request.max_chunks_per_doc} chunks hold "
            f"({chunked.options.max_document_tokens} tokens); only their first tokens were scored"
        ]
    return {"id": str(uuid.uuid4()), "results": results, "meta": meta}


async def cohere_rerank(state: ServeState, data: dict[str, Any]) -> dict[str, Any]:
    """Cohere v1: documents as strings or ``{text}``, ``return_documents``, ``max_chunks_per_doc`` (chunk mode)."""
    state.require_one_label()
    request = parse_cohere_rerank(data, state.limits)
    long_request = await state.cohere_long_documents(request)
    return cohere_answer(request, await state.score_details(request, long_request), "1", long_request)


async def cohere_rerank_v2(state: ServeState, data: dict[str, Any]) -> dict[str, Any]:
    """Cohere v2: documents as strings, ``model`` required, ``max_tokens_per_doc`` truncates each document."""
    state.require_one_label()
    request = parse_cohere_v2_rerank(data, state.limits)
    long_request = await state.cohere_long_documents(request)
    return cohere_answer(request, await state.score_details(request, long_request), "2", long_request)


async def predict(state: ServeState, data: dict[str, Any]) -> dict[str, Any]:
    """Raw pairs: ``{"scores": [...]}`` in input order (a list per pair for multi-label models)."""
    request = parse_predict(data, state.limits)
    long_request = parse_long_documents(data)
    details = await state.score_details(request, long_request)
    out: dict[str, Any] = {"scores": details.scores.tolist()}
    if long_request.options.mode == "chunk":
        out["chunks"] = details.chunks.tolist()
        out["capped"] = details.capped.tolist()
    if long_request.return_spans:
        out["spans"] = [list(span) for span in details.spans]
    return out


async def health(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def info(request: Request) -> Response:
    return JSONResponse(request.app.state.serve.info())


async def metrics(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


async def http_error(request: Request, exc: Exception) -> Response:
    """404, 405 and other routing errors in the same JSON shape as every other error."""
    assert isinstance(exc, HTTPException)
    error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "Http")
    return JSONResponse({"error": exc.detail, "error_type": error_type, "field": None},
                        status_code=exc.status_code, headers=exc.headers)


def create_app(
    encoder: CrossEncoder,
    limits: ServeLimits | None = None,
    runner: Runner | None = None,
    api_key: str | None = None,
) -> Starlette:
    """The ASGI app serving ``encoder``. ``runner`` replaces what scores a merged batch (default
    ``encoder.logits``); with ``api_key`` every endpoint but ``/health`` needs ``Authorization: Bearer <key>``.
    The app's state is ``app.state.serve`` (a ``ServeState``)."""
    if api_key is not None:
        check_api_key(api_key)  # here, not at the first request: Starlette builds its middleware lazily
    state = ServeState(encoder, limits or ServeLimits(), runner)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.batcher.start()
        logger.info("serving %s (%s, %s)", encoder.model_dir, encoder.precision, encoder.provider)
        if api_key is not None:
            logger.info("an API key is required (Authorization: Bearer) on every endpoint but /health")
        yield
        state.begin_drain()
        await state.wait_idle(state.limits.drain_timeout)
        await asyncio.to_thread(state.batcher.close, state.limits.drain_timeout)

    routes = [
        Route("/rerank", scoring_endpoint(rerank), methods=["POST"]),
        Route("/v1/rerank", scoring_endpoint(cohere_rerank), methods=["POST"]),
        Route("/v2/rerank", scoring_endpoint(cohere_rerank_v2), methods=["POST"]),
        Route("/predict", scoring_endpoint(predict), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=state.metrics, endpoints=ENDPOINTS),
            Middleware(FinishBodyMiddleware),
            Middleware(ApiKeyMiddleware, api_key=api_key),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.serve = state
    return app
