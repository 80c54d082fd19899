"""Request bodies of the scoring endpoints: JSON -> typed requests, or an ``ApiError`` naming the field.

Statuses: 400 for a body that is not JSON (including nesting too deep to parse and integers of more than
``MAX_INT_DIGITS`` digits), 413 for too many or too long texts (and too large bodies), 422 for a wrong type, a missing
field, an empty list, a text that is not valid Unicode or an invalid value. Unknown fields are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from crossonnx._inputs import unicode_problem
from crossonnx.errors import InvalidOptionError
from crossonnx.long_documents import DocumentCappedError, LongDocuments
from crossonnx.serve.limits import ServeLimits
from crossonnx.tokenization import TRUNCATION_DIRECTIONS

Pair = tuple[str, str]
# Integer literals longer than this are refused (400) before Python converts them: 640 is the lowest limit
# sys.set_int_max_str_digits accepts, so int() never raises on what is let through.
MAX_INT_DIGITS = 640
SHOWN_CHARS = 40  # how much of an offending value an error message quotes


class ApiError(Exception):
    """An error answered as ``{"error": message, "error_type": ..., "field": ...}`` with ``status``."""

    def __init__(self, status: int, message: str, error_type: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type, "field": self.field}


def malformed(message: str) -> ApiError:
    return ApiError(400, message, "Malformed")


def invalid(message: str, field: str | None) -> ApiError:
    return ApiError(422, message, "Validation", field)


def too_large(message: str, field: str | None) -> ApiError:
    return ApiError(413, message, "TooLarge", field)


_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
               dict: "an object", type(None): "null"}


def json_type(value: object) -> str:
    """How a value looks in JSON terms, for messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shown(value: object) -> str:
    """A short JSON rendering of an offending value, for messages."""
    text = json.dumps(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _json_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise malformed(
            f"the request body holds an integer of {len(literal.lstrip('-'))} digits; "
            f"this server reads at most {MAX_INT_DIGITS}"
        )
    return int(literal)


def parse_json(body: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object (400 when it is not JSON, 422 when it is not an object)."""
    if not body or body.isspace():
        raise malformed("the request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_int=_json_int)
    except UnicodeDecodeError:
        raise malformed("the request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise malformed(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise malformed("the request body is nested too deeply to parse; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, got {json_type(data)}", None)
    return data


class _Fields:
    """Typed access to one JSON object's fields, raising ApiError with the field's name."""

    def __init__(self, data: dict[str, Any], limits: ServeLimits):
        self.data = data
        self.limits = limits

    def text(self, value: object, where: str) -> str:
        if not isinstance(value, str):
            raise invalid(f"{where} must be a string, got {json_type(value)}", where)
        if len(value) > self.limits.max_text_chars:
            raise too_large(
                f"{where} has {len(value)} characters; this server takes at most {self.limits.max_text_chars}",
                where,
            )
        problem = unicode_problem(value)
        if problem is not None:
            raise invalid(f"{where} {problem}", where)
        return value

    def required_text(self, key: str) -> str:
        if key not in self.data:
            raise invalid(f"missing field {key!r}", key)
        return self.text(self.data[key], key)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(f"{key} must be true or false, got {json_type(value)}", key)
        return value

    def items(self, key: str, what: str) -> list[Any]:
        """A required non-empty array of at most ``max_texts_per_request`` items."""
        if key not in self.data or self.data[key] is None:
            raise invalid(f"missing field {key!r}: an array of {what}", key)
        value = self.data[key]
        if not isinstance(value, list):
            raise invalid(f"{key} must be an array of {what}, got {json_type(value)}", key)
        if not value:
            raise invalid(f"{key} is empty; send at least one", key)
        if len(value) > self.limits.max_texts_per_request:
            raise too_large(
                f"{key} has {len(value)} items; this server takes at most {self.limits.max_texts_per_request} "
                "per request",
                key,
            )
        return value


@dataclass
class ScoreRequest:
    """What every scoring endpoint boils down to: pairs, whether to apply the activation, whether to truncate."""

    pairs: list[Pair]
    raw_scores: bool
    truncate: bool
    item_field: str  # "texts", "documents" or "pairs": names pair i in errors as f"{item_field}[{i}]"


@dataclass
class RerankRequest(ScoreRequest):
    """TEI ``POST /rerank``."""

    texts: list[str]
    return_text: bool


@dataclass
class CohereRerankRequest(ScoreRequest):
    """Cohere ``POST /v1/rerank`` and ``POST /v2/rerank``."""

    documents: list[str]
    top_n: int | None
    return_documents: bool  # v1 only
    max_chunks_per_doc: int | None = None  # v1 only: chunk mode, reading that many default windows' tokens
    max_tokens_per_doc: int | None = None  # v2 only: document tokens scored, the first ones


def parse_rerank(data: dict[str, Any], limits: ServeLimits) -> RerankRequest:
    """TEI: ``{"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}``."""
    fields = _Fields(data, limits)
    query = fields.required_text("query")
    items = fields.items("texts", "strings")
    texts = [fields.text(text, f"texts[{i}]") for i, text in enumerate(items)]
    return RerankRequest(
        pairs=[(query, text) for text in texts],
        raw_scores=fields.flag("raw_scores", False),
        truncate=fields.flag("truncate", True),
        item_field="texts",
        texts=texts,
        return_text=fields.flag("return_text", False),
    )


def _cohere_model(data: dict[str, Any], required: bool) -> None:
    """Cohere's ``model``: any name (this server serves one model), a string when given; v2 requires it."""
    model = data.get("model")
    if model is None:
        if required:
            raise invalid("missing field 'model': Cohere's v2 API requires it (any name: this server serves one "
                          "model)", "model")
        return
    if not isinstance(model, str):
        raise invalid(f"model must be a string, got {json_type(model)}", "model")


def _positive_int(data: dict[str, Any], key: str) -> int | None:
    """An optional positive integer field (JSON null: not given)."""
    value = data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise invalid(f"{key} must be a positive integer, got {shown(value)}", key)
    return value


def parse_cohere_rerank(data: dict[str, Any], limits: ServeLimits) -> CohereRerankRequest:
    """Cohere v1: ``{"query", "documents": [str | {"text"}], "top_n"?, "return_documents"?, "max_chunks_per_doc"?,
    "model"?}``."""
    fields = _Fields(data, limits)
    query = fields.required_text("query")
    _cohere_model(data, required=False)
    documents: list[str] = []
    for i, doc in enumerate(fields.items("documents", "strings or {\"text\": string} objects")):
        if isinstance(doc, dict):
            if "text" not in doc:
                raise invalid(f"documents[{i}] has no 'text' field", f"documents[{i}].text")
            documents.append(fields.text(doc["text"], f"documents[{i}].text"))
        elif isinstance(doc, str):
            documents.append(fields.text(doc, f"documents[{i}]"))
        else:
            raise invalid(
                f"documents[{i}] must be a string or an object with a 'text' string, got {json_type(doc)}",
                f"documents[{i}]",
            )
    return CohereRerankRequest(
        pairs=[(query, doc) for doc in documents],
        raw_scores=fields.flag("raw_scores", False),
        truncate=fields.flag("truncate", True),
        item_field="documents",
        documents=documents,
        top_n=_positive_int(data, "top_n"),
        return_documents=fields.flag("return_documents", False),
        max_chunks_per_doc=parse_cohere_chunks(data),
    )


def parse_cohere_v2_rerank(data: dict[str, Any], limits: ServeLimits) -> CohereRerankRequest:
    """Cohere v2: ``{"model", "query", "documents": [str], "top_n"?, "max_tokens_per_doc"?}``. Whether the model
    can take ``max_tokens_per_doc`` tokens beside the query is the app's check (it needs the tokenizer)."""
    fields = _Fields(data, limits)
    _cohere_model(data, required=True)
    query = fields.required_text("query")
    documents: list[str] = []
    for i, doc in enumerate(fields.items("documents", "strings")):
        if isinstance(doc, dict):
            raise invalid(f"documents[{i}] must be a string, got an object (v2 takes plain strings; /v1/rerank takes "
                          "{\"text\": ...} objects)", f"documents[{i}]")
        documents.append(fields.text(doc, f"documents[{i}]"))
    spans = data.get("relevant_spans")
    if spans is not None and not (isinstance(spans, dict) and spans.get("mode") == "disabled"):
        raise invalid("this server does not return relevant spans; leave relevant_spans out", "relevant_spans")
    return CohereRerankRequest(
        pairs=[(query, doc) for doc in documents],
        raw_scores=fields.flag("raw_scores", False),
        truncate=fields.flag("truncate", True),
        item_field="documents",
        documents=documents,
        top_n=_positive_int(data, "top_n"),
        return_documents=False,
        max_tokens_per_doc=_positive_int(data, "max_tokens_per_doc"),
    )


def parse_predict(data: dict[str, Any], limits: ServeLimits) -> ScoreRequest:
    """Raw pairs: ``{"pairs": [[text_a, text_b], ...], "raw_scores"?, "truncate"?}``."""
    fields = _Fields(data, limits)
    pairs: list[Pair] = []
    for i, item in enumerate(fields.items("pairs", "[text_a, text_b] pairs")):
        if not isinstance(item, list) or len(item) != 2:
            got = f"{len(item)} items" if isinstance(item, list) else json_type(item)
            raise invalid(f"pairs[{i}] must be an array of two strings, got {got}", f"pairs[{i}]")
        pairs.append((fields.text(item[0], f"pairs[{i}][0]"), fields.text(item[1], f"pairs[{i}][1]")))
    return ScoreRequest(
        pairs=pairs,
        raw_scores=fields.flag("raw_scores", False),
        truncate=fields.flag("truncate", True),
        item_field="pairs",
    )


# -- long documents (crossonnx.long_documents): an extension object on /rerank and /predict, Cohere's
# max_chunks_per_doc on /v1/rerank and max_tokens_per_doc on /v2/rerank, TEI's truncation_direction. The fields'
# rules are LongDocuments' own: a value it refuses is answered as 422 naming the JSON field it came from. ---------
LONG_DOCUMENT_KEYS = ("mode", "chunk_tokens", "chunk_overlap", "aggregate", "max_document_tokens", "on_capped",
                      "return_spans")
# LongDocuments field -> the request field it comes from
LONG_DOCUMENT_PATHS = {
    **{key: f"long_documents.{key}" for key in LONG_DOCUMENT_KEYS},
    "truncation_direction": "truncation_direction",
}


@dataclass
class LongDocumentRequest:
    """How a request wants long texts handled; ``active`` False means exactly the default behaviour.
    ``cap_field``: the request field that caps what chunk mode reads of a document (named in its errors)."""

    options: LongDocuments
    return_spans: bool = False
    active: bool = False
    cap_field: str = "long_documents.max_document_tokens"


def long_document_options(paths: dict[str, str], **fields: Any) -> LongDocuments:
    """``LongDocuments(**fields)``; a field it refuses is 422 naming its request field (``paths``)."""
    try:
        return LongDocuments(**fields)
    except InvalidOptionError as exc:
        path = paths.get(exc.field, exc.field)
        got = f", got {shown(exc.value)}" if exc.has_value else ""
        raise invalid(f"{path} {exc.rule}{got}", path) from None


def _truncation_direction(data: dict[str, Any]) -> object:
    """The request's truncation_direction, in lower case when it is a direction (TEI takes any case)."""
    value = data.get("truncation_direction")
    if isinstance(value, str) and value.lower() in TRUNCATION_DIRECTIONS:
        return value.lower()
    return value


def parse_long_documents(data: dict[str, Any]) -> LongDocumentRequest:
    """``truncation_direction`` and ``long_documents: {mode, chunk_tokens, chunk_overlap, aggregate,
    max_document_tokens, on_capped, return_spans}`` (all optional; unknown keys in the object are 422 so that a typo
    does not go unnoticed, and the 0.x ``max_chunks`` names what replaced it)."""
    direction = _truncation_direction(data)
    spec = data.get("long_documents")
    if spec is None:
        options = long_document_options(LONG_DOCUMENT_PATHS, truncation_direction=direction)
        return LongDocumentRequest(options, active=direction is not None)
    if not isinstance(spec, dict):
        raise invalid(f"long_documents must be an object, got {json_type(spec)}", "long_documents")
    if "max_chunks" in spec:
        raise invalid("long_documents.max_chunks is gone: the cap is in document tokens now (a count of windows let "
                      "small windows read little of a document); send max_document_tokens, e.g. N windows x "
                      "chunk_tokens, or leave it out for 10 full-size windows' tokens", "long_documents.max_chunks")
    unknown = [key for key in spec if key not in LONG_DOCUMENT_KEYS]
    if unknown:
        raise invalid(f"long_documents has no field {unknown[0]!r}; it takes {', '.join(LONG_DOCUMENT_KEYS)}",
                      f"long_documents.{unknown[0]}")
    options = long_document_options(
        LONG_DOCUMENT_PATHS, mode=spec.get("mode", "truncate"), chunk_tokens=spec.get("chunk_tokens"),
        chunk_overlap=spec.get("chunk_overlap"), aggregate=spec.get("aggregate", "max"),
        max_document_tokens=spec.get("max_document_tokens"), on_capped=spec.get("on_capped", "raise"),
        truncation_direction=direction,
    )
    return_spans = spec.get("return_spans")
    if return_spans is not None and not isinstance(return_spans, bool):
        raise invalid(f"long_documents.return_spans must be true or false, got {json_type(return_spans)}",
                      "long_documents.return_spans")
    return LongDocumentRequest(options, return_spans=bool(return_spans), active=True)


def capped_documents(error: DocumentCappedError, item_field: str, cap_field: str) -> ApiError:
    """Chunk mode met documents longer than its cap with ``on_capped`` "raise": 422 naming the cap and the texts."""
    texts = "; ".join(f"{item_field}[{i}] has {t} tokens, it would read {c}"
                      for i, c, t in zip(error.indexes[:3], error.covered[:3], error.tokens[:3], strict=True))
    more = f"; and {len(error.indexes) - 3} more" if len(error.indexes) > 3 else ""
    return invalid(
        f"{len(error.indexes)} of {error.count} texts are longer than chunk mode reads ({cap_field}, by default 10 "
        f"full-size windows' tokens): {texts}{more}. Send {cap_field} of at least {max(error.tokens)} to read them "
        'whole, or long_documents.on_capped "flag" to score their first tokens and flag them capped',
        cap_field,
    )


def parse_cohere_chunks(data: dict[str, Any]) -> int | None:
    """Cohere v1's ``max_chunks_per_doc``: a positive integer, or None (not given)."""
    return _positive_int(data, "max_chunks_per_doc")


def cohere_chunks(cap_tokens: int) -> LongDocumentRequest:
    """v1's ``max_chunks_per_doc`` once the app has turned it into tokens beside the query: chunk mode over each
    document's first ``cap_tokens`` tokens; a longer one is scored on them and flagged, as Cohere never refuses it."""
    options = LongDocuments("chunk", max_document_tokens=cap_tokens, on_capped="flag")
    return LongDocumentRequest(options, active=True, cap_field="max_chunks_per_doc")


def document_token_cap(max_tokens_per_doc: int) -> LongDocumentRequest:
    """v2's ``max_tokens_per_doc``, known to fit beside the query: each document is scored on its first that many
    tokens (cut back to a word boundary) in one window; a document that fits is scored whole, as the original pair."""
    options = LongDocuments("chunk", max_document_tokens=max_tokens_per_doc, on_capped="flag")
    return LongDocumentRequest(options, active=True, cap_field="max_tokens_per_doc")
