"""The public surface: one ``LongDocuments`` option whose rules are checked once and name the field (in Python, on
the command line and as the server's 422), the migration error for the keyword arguments it replaced, a small
``CrossEncoder``, every error in ``crossonnx.errors``, a light ``import crossonnx``, and no import circle."""

from __future__ import annotations

import ast
import inspect
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crossonnx
from crossonnx import CrossEncoder, CrossOnnxError, InvalidOptionError, LongDocuments, MovedArgumentError
from crossonnx.long_documents import AGGREGATES, MODES, MOVED_ARGUMENTS
from crossonnx.tokenization import TRUNCATION_DIRECTIONS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crossonnx"
EXAMPLES = int(os.environ.get("CROSSONNX_HYPOTHESIS_EXAMPLES", "120"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FIELDS = ("mode", "chunk_tokens", "chunk_overlap", "aggregate", "max_document_tokens", "on_capped",
          "truncation_direction")

# any value a caller or a JSON body could pass
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.text(max_size=8),
              st.sampled_from([*MODES, *AGGREGATES, *TRUNCATION_DIRECTIONS, "Left", "CHUNK", " max", 0, 1, -1])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children,
                                                                                max_size=2)),
    max_leaves=4,
)


def _int_at_least(value: object, minimum: int) -> bool:
    return type(value) is int and value >= minimum


def valid_alone(field: str, value: object) -> bool:
    """The rule of each field on its own, written here from the documentation (not from the implementation)."""
    if field == "mode":
        return isinstance(value, str) and value in MODES
    if field == "aggregate":
        return isinstance(value, str) and value in AGGREGATES
    if field == "truncation_direction":
        return value is None or (isinstance(value, str) and value in TRUNCATION_DIRECTIONS)
    if field == "on_capped":
        return isinstance(value, str) and value in ("raise", "flag")
    if field == "max_chunks":  # Cohere's max_chunks_per_doc
        return _int_at_least(value, 1)
    if field in ("chunk_tokens", "max_document_tokens"):
        return value is None or _int_at_least(value, 1)
    return value is None or _int_at_least(value, 0)  # chunk_overlap


# -- LongDocuments: every rule, once, naming the field ----------------------------------------------------------
@SETTINGS
@given(field=st.sampled_from(FIELDS), value=values)
def test_any_invalid_field_value_is_refused_naming_that_field(field: str, value: object):
    fields: dict[str, Any] = {"mode": "chunk", field: value}
    if valid_alone(field, value):
        options = LongDocuments(**fields)  # no other field is set: nothing else can be wrong
        assert getattr(options, field) == value
        return
    with pytest.raises(InvalidOptionError) as info:
        LongDocuments(**fields)
    error = info.value
    assert error.field == field and str(error).startswith(field)
    assert isinstance(error, CrossOnnxError) and isinstance(error, ValueError)
    assert pickle.loads(pickle.dumps(error)).field == field  # Ray carries errors between processes


@SETTINGS
@given(tokens=st.integers(1, 10**4), overlap=st.integers(0, 10**4), field=st.sampled_from(["chunk_tokens",
                                                                                          "chunk_overlap"]))
def test_the_rules_between_fields_name_the_field_at_fault(tokens: int, overlap: int, field: str):
    if overlap >= tokens:
        with pytest.raises(InvalidOptionError) as info:
            LongDocuments("chunk", chunk_tokens=tokens, chunk_overlap=overlap)
        assert info.value.field == "chunk_overlap"
    else:
        assert LongDocuments("chunk", chunk_tokens=tokens, chunk_overlap=overlap).chunk_overlap == overlap
    with pytest.raises(InvalidOptionError) as info:  # a chunk option without chunk mode
        LongDocuments("truncate", **{field: tokens})
    assert info.value.field == field and 'applies to mode "chunk"' in str(info.value)


@SETTINGS
@given(value=values)
def test_a_long_documents_argument_is_a_mode_name_or_a_long_documents(value: object):
    if value is None or (isinstance(value, str) and value in MODES):
        assert LongDocuments.of(value) == LongDocuments(value or "truncate")  # None: the default
        return
    with pytest.raises(InvalidOptionError) as info:
        LongDocuments.of(value)  # type: ignore[arg-type]
    assert info.value.field == "long_documents" and "LongDocuments" in str(info.value)


def test_long_documents_of_keeps_an_object_and_defaults_to_truncate():
    options = LongDocuments("chunk", chunk_tokens=64, aggregate="mean")
    assert LongDocuments.of(options) is options
    assert LongDocuments.of(None) == LongDocuments() == LongDocuments.of("truncate")
    assert options.to_dict() == {"mode": "chunk", "chunk_tokens": 64, "chunk_overlap": None, "aggregate": "mean",
                                 "max_document_tokens": None, "on_capped": "raise", "truncation_direction": None}


# -- the keyword arguments LongDocuments replaced ---------------------------------------------------------------
OLD_VALUES = {"chunk_tokens": 16, "chunk_overlap": 4, "aggregate": "mean", "max_chunks": 3,
              "truncation_direction": "left"}
PAIRS = [("a man plays a guitar", "a man is playing the guitar on a stage " * 150), ("a dog", "a cat sleeps")]


@pytest.mark.parametrize("name", MOVED_ARGUMENTS)
@pytest.mark.parametrize("method", ["predict", "predict_details", "rank"])
def test_an_old_keyword_argument_names_the_long_documents_to_pass(tiny_encoder: CrossEncoder, method: str,
                                                                  name: str):
    old = {name: OLD_VALUES[name]} if name == "truncation_direction" else {"long_documents": "chunk",
                                                                         name: OLD_VALUES[name]}

    def call(**kwargs: Any) -> Any:
        if method == "rank":
            return tiny_encoder.rank(PAIRS[0][0], [doc for _, doc in PAIRS], **kwargs)
        return getattr(tiny_encoder, method)(PAIRS, **kwargs)

    with pytest.raises(MovedArgumentError) as info:
        call(**old)
    message = str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, CrossOnnxError)
    assert message.startswith(f"{method}() no longer takes {name}=")
    # the call it names works, and scores what the old arguments asked for
    suggested = message.split("long_documents=", 1)[1].split(" (from crossonnx", 1)[0]
    options = eval(suggested, {"LongDocuments": LongDocuments})
    if name == "max_chunks":  # the window count became a token cap: the message says how to state it
        assert options == LongDocuments("chunk") and "max_document_tokens=" in message
    else:
        assert options == LongDocuments(**{"mode": "truncate" if name == "truncation_direction" else "chunk",
                                           name: OLD_VALUES[name]})
    call(long_documents=options)


def test_several_old_arguments_and_other_unknown_ones(tiny_encoder: CrossEncoder):
    with pytest.raises(MovedArgumentError, match=r"chunk_tokens=, max_chunks=: .*LongDocuments\(mode='chunk', "
                                                 r"chunk_tokens=8\).* max_document_tokens=16 \(2 windows of 8"):
        tiny_encoder.predict(PAIRS, chunk_tokens=8, max_chunks=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'chunk_size'") as info:
        tiny_encoder.predict(PAIRS, chunk_size=8)  # type: ignore[call-arg]
    assert not isinstance(info.value, CrossOnnxError)  # Python's own error, as for any other typo
    with pytest.raises(InvalidOptionError) as bad:
        tiny_encoder.predict(PAIRS, long_documents="chunks")  # type: ignore[arg-type]
    assert bad.value.field == "long_documents"


def test_a_mode_name_is_that_mode_with_default_options(tiny_encoder: CrossEncoder):
    for mode in MODES:
        by_name = tiny_encoder.predict_details(PAIRS, long_documents=mode)
        by_object = tiny_encoder.predict_details(PAIRS, long_documents=LongDocuments(mode))
        assert by_name.scores.tobytes() == by_object.scores.tobytes() and by_name.spans == by_object.spans
    assert tiny_encoder.predict_details(PAIRS, long_documents="chunk").chunks[0] > 1


def test_the_signatures_take_one_long_documents_argument():
    for method in (CrossEncoder.predict, CrossEncoder.predict_details, CrossEncoder.rank):
        parameters = inspect.signature(method).parameters
        assert parameters["long_documents"].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters["long_documents"].default == "truncate"
        assert not set(parameters) & set(MOVED_ARGUMENTS), method.__name__


# -- the command line builds one LongDocuments; a broken rule names the flag -------------------------------------
def test_cli_flags_build_one_long_documents():
    import argparse

    from crossonnx.runtime_args import add_long_document_args, long_document_options

    parser = argparse.ArgumentParser()
    add_long_document_args(parser)
    args = parser.parse_args(["--long-documents", "chunk", "--chunk-tokens", "32", "--aggregate", "mean"])
    assert long_document_options(args) == LongDocuments("chunk", chunk_tokens=32, aggregate="mean")
    assert long_document_options(parser.parse_args([])) == LongDocuments()
    capped = ["--long-documents", "chunk", "--max-document-tokens", "900", "--on-capped", "flag"]
    assert long_document_options(parser.parse_args(capped)) == LongDocuments(
        "chunk", max_document_tokens=900, on_capped="flag"
    )
    with pytest.raises(MovedArgumentError, match=r"--max-chunks is gone: .*--max-document-tokens 96"):
        long_document_options(parser.parse_args(["--long-documents", "chunk", "--chunk-tokens", "24",
                                                 "--max-chunks", "4"]))
    for argv, field, flag in ((["--chunk-overlap", "4"], "chunk_overlap", "--chunk-overlap"),
                              (["--long-documents", "chunk", "--chunk-tokens", "4", "--chunk-overlap", "4"],
                               "chunk_overlap", "--chunk-overlap")):
        with pytest.raises(InvalidOptionError) as info:
            long_document_options(parser.parse_args(argv))
        assert info.value.field == field and str(info.value).startswith(flag)


# -- the server: the same rules, answered as 422 naming the JSON field ------------------------------------------
def _json_values() -> st.SearchStrategy:
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=6), st.sampled_from([*MODES, *AGGREGATES, *TRUNCATION_DIRECTIONS, "RIGHT"])),
        lambda children: st.one_of(st.lists(children, max_size=2), st.dictionaries(st.text(max_size=3), children,
                                                                                    max_size=2)),
        max_leaves=3,
    )


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=_json_values())
def test_the_server_answers_any_invalid_field_with_422_naming_its_path(field: str, value: object):
    pytest.importorskip("starlette")
    from crossonnx.serve.schema import ApiError, parse_long_documents

    if field == "truncation_direction":
        body: dict[str, Any] = {"truncation_direction": value, "long_documents": {"mode": "chunk"}}
        path = "truncation_direction"
        normalized = value.lower() if isinstance(value, str) and value.lower() in TRUNCATION_DIRECTIONS else value
        valid = value is None or valid_alone(field, normalized)
    else:
        body = {"long_documents": {"mode": "chunk", field: value}}
        path = f"long_documents.{field}"
        # JSON null is "not given" for the optional sizes, and an explicit null elsewhere is refused
        valid = valid_alone(field, value)
    if valid:
        assert parse_long_documents(body).active
        return
    with pytest.raises(ApiError) as info:
        parse_long_documents(body)
    error = info.value
    assert (error.status, error.error_type, error.field) == (422, "Validation", path)
    assert error.message.startswith(path)
    json.dumps(error.body())


@SETTINGS
@given(value=_json_values())
def test_cohere_max_chunks_per_doc_is_refused_by_the_same_rule(value: object):
    pytest.importorskip("starlette")
    from crossonnx.serve.schema import ApiError, parse_cohere_chunks

    if value is None or valid_alone("max_chunks", value):
        parse_cohere_chunks({"max_chunks_per_doc": value})
        return
    with pytest.raises(ApiError) as info:
        parse_cohere_chunks({"max_chunks_per_doc": value})
    assert (info.value.status, info.value.field) == (422, "max_chunks_per_doc")


@pytest.mark.parametrize(
    ("path", "extra", "field", "message"),
    [
        ("/rerank", {"long_documents": {"mode": "chunk", "chunk_overlap": 1.5}}, "long_documents.chunk_overlap",
         "long_documents.chunk_overlap must be 0 or a positive integer, got 1.5"),
        ("/predict", {"long_documents": {"chunk_tokens": 8}}, "long_documents.chunk_tokens",
         'long_documents.chunk_tokens applies to mode "chunk"'),
        ("/predict", {"long_documents": {"mode": "chunk", "chunk_tokens": 4, "chunk_overlap": 9}},
         "long_documents.chunk_overlap", "long_documents.chunk_overlap (9) must be smaller than chunk_tokens (4)"),
        ("/rerank", {"truncation_direction": "both"}, "truncation_direction",
         'truncation_direction must be "left" or "right", got "both"'),
        ("/v1/rerank", {"max_chunks_per_doc": -2}, "max_chunks_per_doc",
         "max_chunks_per_doc must be a positive integer, got -2"),
    ],
)
def test_a_real_server_answers_422_with_the_field_path(tiny_server, path, extra, field, message):
    body = {"/rerank": {"query": "q", "texts": ["a"]}, "/predict": {"pairs": [["q", "a"]]},
            "/v1/rerank": {"query": "q", "documents": ["a"]}}[path]
    response = tiny_server.post(path, {**body, **extra})
    assert response.status_code == 422, response.text
    assert response.json() == {"error": message, "error_type": "Validation", "field": field}


# -- a small public surface ----------------------------------------------------------------------------------
def test_cross_encoder_has_at_most_seven_public_methods():
    public = sorted(name for name, member in vars(CrossEncoder).items()
                    if not name.startswith("_") and callable(member))
    assert public == ["info", "logits", "predict", "predict_details", "rank", "scores_from_logits", "warmup"]
    assert len(public) <= 7


def test_every_error_lives_in_errors_and_is_exported():
    import crossonnx.errors as errors
    from crossonnx.scale import ScaleError

    classes = {name for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__}
    assert classes >= {"CrossOnnxError", "InvalidInputError", "InvalidOptionError", "MovedArgumentError",
                       "ScaleError"}
    for name in classes:
        assert getattr(crossonnx, name) is getattr(errors, name) and name in crossonnx.__all__, name
    assert ScaleError is errors.ScaleError  # the old import still works
    # no module defines an exception a user would catch outside errors.py, but the server's own HTTP plumbing
    internal = {"ApiError", "BatcherError", "QueueFull", "RequestTooLarge", "Draining"}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" or "exporter" in path.parts or "bench" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and (base.id.endswith("Error") or base.id == "Exception")
                for base in node.bases
            ):
                assert node.name in internal, f"{path.relative_to(ROOT)} defines {node.name}"


def test_import_crossonnx_is_light_and_long_documents_is_exported_lazily():
    script = (
        "import sys, crossonnx\n"
        "heavy = sorted(m for m in ('onnxruntime', 'openvino', 'numpy', 'tokenizers') if m in sys.modules)\n"
        "from crossonnx import LongDocuments, InvalidOptionError, ScaleError\n"
        "assert LongDocuments('chunk').mode == 'chunk'\n"
        "print(heavy, 'onnxruntime' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]


# -- no import circle ---------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The crossonnx modules ``path`` imports at module level, ``if TYPE_CHECKING:`` blocks included (a circle
    of type-only imports is a circle all the same); parents are left out (importing a submodule always imports
    its packages first, and a package may import its submodules lazily)."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*stack[stack.index(target):], target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return circles


def test_no_module_of_the_package_imports_itself_through_others():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, name, set(paths)) for name, path in paths.items()}
    assert "crossonnx.long_documents" in graph["crossonnx.encoder"]  # the walk sees imports
    assert "crossonnx.long_documents" not in graph["crossonnx.tokenization"]
    assert not _circles(graph), [" -> ".join(circle) for circle in _circles(graph)]
    # and the walk finds a circle where there is one
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("first", ["crossonnx.tokenization", "crossonnx.long_documents", "crossonnx._pipeline",
                                   "crossonnx.encoder", "crossonnx.runtime_args", "crossonnx.serve.schema",
                                   "crossonnx.scale.files"])
def test_each_module_imports_first_in_a_fresh_process(first: str):
    done = subprocess.run([sys.executable, "-c", f"import {first}"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


def test_predict_scores_are_unchanged_by_the_options_object(tiny_encoder: CrossEncoder):
    """Truncate mode through the one path gives exactly the model's activation of ``logits``."""
    logits = tiny_encoder.logits(PAIRS)
    expected = tiny_encoder.scores_from_logits(logits)
    assert tiny_encoder.predict(PAIRS).tobytes() == expected.tobytes()
    assert tiny_encoder.predict(PAIRS, long_documents=LongDocuments()).tobytes() == expected.tobytes()
    assert np.asarray(tiny_encoder.predict(PAIRS[0])).tobytes() == expected[:1].tobytes()
