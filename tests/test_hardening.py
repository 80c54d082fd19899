"""Careless and hostile input: invalid Unicode, pathological JSON, oversized bodies, wrong content types, a
required API key, and exports killed half-way. Each answer must be clear: a crossonnx error or a 4xx JSON body
that names the problem, never a 5xx or a reset connection. Real server on 127.0.0.1, real clients."""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from crossonnx.encoder import CrossEncoder  # noqa: E402
from crossonnx.errors import InvalidInputError  # noqa: E402
from crossonnx.serve.security import API_KEY_ENV, resolve_api_key  # noqa: E402
from serving import JSON, SMALL_LIMITS, WAIT_S, Running, cli_server, serving, until  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SURROGATE = "\ud83d"  # half of a UTF-16 pair: a Python str, but not valid Unicode
HUNDRED_MB = 100 << 20


def escaped(body: object) -> bytes:
    """JSON with non-ASCII as \\u escapes: how a client sends a lone surrogate."""
    return json.dumps(body).encode()


def assert_error(response: httpx.Response, status: int, error_type: str, field: str | None) -> dict:
    assert response.status_code == status, response.text
    payload = response.json()
    assert (payload["error_type"], payload["field"]) == (error_type, field), payload
    assert isinstance(payload["error"], str) and payload["error"]
    return payload


# -- invalid Unicode in the runtime ----------------------------------------------------------------------------
def test_lone_surrogate_is_named_by_predict_logits_and_token_counts(tiny_encoder: CrossEncoder):
    from crossonnx import _pipeline

    pairs = [("a query", "a passage"), ("a query", f"broken {SURROGATE} text")]
    token_counts = functools.partial(_pipeline.token_counts, tiny_encoder)
    for call in (tiny_encoder.predict, tiny_encoder.logits, token_counts, tiny_encoder.predict_details):
        with pytest.raises(InvalidInputError, match=r"pairs\[1\]\[1\] is not valid Unicode.*surrogate"):
            call(pairs)
    with pytest.raises(InvalidInputError, match=r"the pair\[0\] is not valid Unicode"):
        tiny_encoder.predict((SURROGATE, "b"))
    # a proper surrogate pair written as two code points is still two lone surrogates to Python
    with pytest.raises(InvalidInputError, match=r"pairs\[0\]\[0\]"):
        tiny_encoder.predict([("\ud83d\ude42", "b")])
    assert np.isfinite(tiny_encoder.predict([("🙂 naïve", "ok")])).all()  # valid non-ASCII still scores


def test_rank_names_the_query_or_document(tiny_encoder: CrossEncoder):
    with pytest.raises(InvalidInputError, match=r"^query is not valid Unicode"):
        tiny_encoder.rank(SURROGATE, ["a"])
    with pytest.raises(InvalidInputError, match=r"^documents\[2\] is not valid Unicode"):
        tiny_encoder.rank("q", ["a", "b", f"x{SURROGATE}"])
    with pytest.raises(InvalidInputError, match="documents must be a list of str, got int"):
        tiny_encoder.rank("q", 5)  # was a bare TypeError from list(5)


def test_a_zero_dimensional_string_array_is_one_string_not_a_pair(tiny_encoder: CrossEncoder):
    with pytest.raises(InvalidInputError, match="single string"):
        tiny_encoder.predict(np.array("ab"))  # was scored as the pair ("a", "b")


# -- invalid Unicode and pathological JSON through the server ----------------------------------------------------
SURROGATE_CASES = [
    ("/rerank", {"query": "q", "texts": ["a", SURROGATE]}, "texts[1]"),
    ("/rerank", {"query": f"q{SURROGATE}", "texts": ["a"]}, "query"),
    ("/v1/rerank", {"query": "q", "documents": [{"text": SURROGATE}]}, "documents[0].text"),
    ("/v1/rerank", {"query": "q", "documents": ["a", SURROGATE + "b"]}, "documents[1]"),
    ("/predict", {"pairs": [["a", "b"], ["c", "d"], ["e", "\udc80"]]}, "pairs[2][1]"),
]


@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_CASES)
def test_lone_surrogate_is_a_422_naming_the_field(tiny_server: Running, path, body, field):
    payload = assert_error(tiny_server.post(path, content=escaped(body)), 422, "Validation", field)
    assert "not valid Unicode" in payload["error"]


def test_surrogate_bytes_in_utf8_are_a_422_too(tiny_server: Running):
    # json.loads decodes bytes with surrogatepass: the UTF-8 form of a surrogate also reaches the schema
    body = b'{"query": "q", "texts": ["ok", "\xed\xa0\xbd"]}'
    assert_error(tiny_server.post("/rerank", content=body), 422, "Validation", "texts[1]")


def test_a_surrogate_pair_escape_is_one_valid_character(tiny_server: Running, tiny_encoder: CrossEncoder):
    response = tiny_server.post("/predict", content=b'{"pairs": [["\\ud83d\\ude42", "b"]]}')
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], tiny_encoder.predict([("🙂", "b")]), atol=1e-5)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/predict"])
@pytest.mark.parametrize("depth", [100_000, 200_000])  # arrays of 200 KB (parsed on the event loop), 400 KB
def test_deeply_nested_json_is_malformed(tiny_server: Running, path, depth):
    body = b"[" * depth + b"]" * depth
    payload = assert_error(tiny_server.post(path, content=body), 400, "Malformed", None)
    assert "nested too deeply" in payload["error"]
    nested_object = b'{"a":' * depth + b"1" + b"}" * depth  # 600 KB, 1.2 MB (parsed in a worker thread)
    assert_error(tiny_server.post(path, content=nested_object), 400, "Malformed", None)
    assert tiny_server.get("/health").status_code == 200


def test_huge_integer_literals_are_malformed(tiny_server: Running):
    for literal in ("1" + "0" * 5000, "-" + "9" * 5000):
        body = f'{{"query": "q", "documents": ["a"], "top_n": {literal}}}'.encode()
        payload = assert_error(tiny_server.post("/v1/rerank", content=body), 400, "Malformed", None)
        assert "5001 digits" in payload["error"] or "5000 digits" in payload["error"]
    # anywhere in the body, even in a field the server ignores
    unknown = ('{"pairs": [["a", "b"]], "seed": ' + "7" * 5000 + "}").encode()
    assert_error(tiny_server.post("/predict", content=unknown), 400, "Malformed", None)
    # a long but convertible integer is an ordinary value: top_n larger than the documents keeps them all
    fine = ('{"query": "q", "documents": ["a", "b"], "top_n": ' + "9" * 600 + "}").encode()
    response = tiny_server.post("/v1/rerank", content=fine)
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    negative = ('{"query": "q", "documents": ["a"], "top_n": -' + "9" * 600 + "}").encode()
    payload = assert_error(tiny_server.post("/v1/rerank", content=negative), 422, "Validation", "top_n")
    assert len(payload["error"]) < 120  # the value is quoted, not the whole of it


# -- content type ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "json",
                                          "application/jsonp", "multipart/form-data; boundary=x"])
def test_a_body_not_declared_json_is_415(tiny_server: Running, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    body = escaped({"query": "q", "texts": ["a"]})
    for path in ("/rerank", "/v1/rerank", "/predict"):
        response = httpx.post(tiny_server.url + path, content=body, headers=headers, timeout=WAIT_S)
        payload = assert_error(response, 415, "UnsupportedMediaType", None)
        assert "Content-Type: application/json" in payload["error"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8", "application/vnd.api+json"])
def test_json_media_types_with_parameters_are_accepted(tiny_server: Running, content_type):
    response = httpx.post(tiny_server.url + "/predict", content=escaped({"pairs": [["a", "b"]]}),
                          headers={"content-type": content_type}, timeout=WAIT_S)
    assert response.status_code == 200, response.text


# -- bodies far over the limit --------------------------------------------------------------------------------
def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of the answer"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)


def test_a_declared_oversized_body_is_answered_before_it_is_sent(tiny_server: Running):
    with _connect(tiny_server.port) as sock:
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % HUNDRED_MB + b'{"query": "q", "texts": ["' + b"x" * 65536)
        status, headers, body = _read_response(sock)  # 100 MB announced, 64 KB sent: the answer is already there
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error_type"] == "TooLarge"
    assert tiny_server.get("/health").status_code == 200


def test_a_chunked_body_is_refused_once_it_passes_the_limit(tiny_server: Running):
    chunk = b"x" * 50_000
    with _connect(tiny_server.port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(SMALL_LIMITS.max_body_bytes // len(chunk) + 1):  # just past the limit, and no last chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _, body = _read_response(sock)
    assert (status, json.loads(body)["error_type"]) == (413, "TooLarge")
    assert tiny_server.get("/health").status_code == 200


def test_an_early_answer_to_a_small_body_keeps_the_connection_open(tiny_server: Running):
    refused = b'{"pairs": [["a", "b"]]}'
    with _connect(tiny_server.port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(refused), refused))
        status, headers, _ = _read_response(sock)
        assert (status, headers.get("connection")) == (415, None)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(refused), refused))
        status, _, body = _read_response(sock)  # the same connection serves the next request
    assert status == 200 and len(json.loads(body)["scores"]) == 1


def _stream(total: int) -> Iterator[bytes]:
    chunk = b"x" * 65536
    for _ in range(total // len(chunk)):
        yield chunk


def post_streaming(port: int, path: str, total: int, chunked: bool, headers: dict[str, str]
                   ) -> tuple[int, dict[str, str], bytes]:
    """http.client, which writes the whole body before it reads the answer (as urllib and most sync clients do)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        headers = dict(headers) if chunked else {**headers, "Content-Length": str(total)}
        connection.request("POST", path, body=_stream(total), headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("connection", ["close", "keep-alive"])
def test_a_client_that_sends_100_mb_before_reading_gets_the_413(tiny_server: Running, chunked, connection):
    status, headers, body = post_streaming(tiny_server.port, "/rerank", HUNDRED_MB, chunked,
                                           {**JSON, "Connection": connection})
    assert status == 413, body
    assert json.loads(body)["error_type"] == "TooLarge"
    assert headers["connection"] == "close"
    assert tiny_server.get("/health").status_code == 200


def test_an_early_415_also_reaches_a_client_still_sending(tiny_server: Running):
    status, _, body = post_streaming(tiny_server.port, "/predict", 8 << 20, False, {"Connection": "close"})
    assert (status, json.loads(body)["error_type"]) == (415, "UnsupportedMediaType")


# -- the API key ----------------------------------------------------------------------------------------------
KEY = "k3y-Only.the_server~knows"


@pytest.fixture(scope="module")
def keyed_server(tiny_encoder: CrossEncoder) -> Iterator[Running]:
    with serving(tiny_encoder, SMALL_LIMITS, api_key=KEY) as running:
        yield running


GUARDED = [
    ("POST", "/rerank", {"query": "q", "texts": ["a"]}),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["a"]}),
    ("POST", "/predict", {"pairs": [["a", "b"]]}),
    ("GET", "/info", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_api_key_is_required_on_scoring_info_and_metrics(keyed_server: Running, method, path, body):
    url = keyed_server.url + path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": KEY}, {"X-Api-Key": KEY}):
        response = httpx.request(method, url, json=body, headers=headers, timeout=WAIT_S)
        assert_error(response, 401, "Unauthorized", None)
        assert response.headers["www-authenticate"] == "Bearer"
        assert KEY not in response.text
    for scheme in ("Bearer", "bearer"):
        response = httpx.request(method, url, json=body, headers={"Authorization": f"{scheme} {KEY}"},
                                 timeout=WAIT_S)
        assert response.status_code == 200, response.text


def test_health_stays_open_and_unknown_paths_need_the_key(keyed_server: Running, tiny_encoder: CrossEncoder):
    assert keyed_server.get("/health").json() == {"status": "ok"}
    assert keyed_server.get("/nope").status_code == 401  # no route map for strangers
    assert keyed_server.get("/nope", {"Authorization": f"Bearer {KEY}"}).status_code == 404
    scored = keyed_server.post("/predict", {"pairs": [["a", "b"]]}).status_code
    assert scored == 401
    response = httpx.post(keyed_server.url + "/predict", json={"pairs": [["a", "b"]]},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=WAIT_S)
    np.testing.assert_allclose(response.json()["scores"], tiny_encoder.predict([("a", "b")]), atol=1e-5)
    assert KEY not in keyed_server.get("/info", {"Authorization": f"Bearer {KEY}"}).text


def test_an_unauthorized_client_sending_a_large_body_gets_the_401(keyed_server: Running):
    status, headers, body = post_streaming(keyed_server.port, "/rerank", 8 << 20, True, {**JSON, "Connection": "close"})
    assert (status, json.loads(body)["error_type"], headers["www-authenticate"]) == (401, "Unauthorized", "Bearer")


def test_create_app_refuses_a_key_that_cannot_be_sent(tiny_encoder: CrossEncoder):
    from crossonnx.serve.app import create_app

    for bad in ("", "with space", "naïve"):
        with pytest.raises(ValueError, match="API key"):
            create_app(tiny_encoder, SMALL_LIMITS, api_key=bad)


def test_resolve_api_key_from_flag_or_environment():
    assert resolve_api_key(None, {}) is None
    assert resolve_api_key(None, {API_KEY_ENV: "from-env"}) == "from-env"
    assert resolve_api_key("from-flag", {API_KEY_ENV: "from-env"}) == "from-flag"
    for bad in ("", "two words", "clé"):
        with pytest.raises(ValueError, match=r"CROSSONNX_API_KEY"):
            resolve_api_key(None, {API_KEY_ENV: bad})
        with pytest.raises(ValueError, match="--api-key"):
            resolve_api_key(bad, {})


def test_cli_takes_the_key_from_the_environment_and_never_logs_it(tiny_exports: dict[str, Path]):
    args = [str(tiny_exports["bert"]), "--threads", "1", "--log-level", "debug", "--no-tune"]
    with cli_server(args, env={API_KEY_ENV: KEY}) as (url, process):
        body = {"query": "q", "texts": ["a"]}
        assert httpx.post(url + "/rerank", json=body, timeout=WAIT_S).status_code == 401
        authorized = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(url + "/rerank", json=body, headers=authorized, timeout=WAIT_S).status_code == 200
        assert httpx.get(url + "/metrics", headers=authorized, timeout=WAIT_S).status_code == 200
        spoofed = {**authorized, "X-Forwarded-For": "203.0.113.9"}  # not trusted, not even from 127.0.0.1
        assert httpx.get(url + "/info", headers=spoofed, timeout=WAIT_S).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
        output = process.stdout.read().decode()  # type: ignore[union-attr]
    assert "API key is required" in output and '"POST /rerank HTTP/1.1" 401' in output  # the debug log ran
    assert KEY not in output
    assert '127.0.0.1:' in output and "203.0.113.9" not in output  # the access log names the real peer


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_refuses_an_empty_key(tiny_exports: dict[str, Path], how, monkeypatch, capsys):
    from crossonnx.cli import main

    if how == "env":
        monkeypatch.setenv(API_KEY_ENV, "")
    argv = ["serve", str(tiny_exports["bert"])] + (["--api-key", ""] if how == "flag" else [])
    assert main(argv) == 2
    assert "is empty" in capsys.readouterr().err


# -- an export killed half-way --------------------------------------------------------------------------------
PARTIAL = re.compile(r"\.bert\.partial-(\d+)@(.+)-[a-z0-9_]+")


def test_the_next_export_removes_partial_folders_of_dead_exports_only(tmp_path: Path, tiny_checkpoints):
    checkpoint, out = tiny_checkpoints["bert"], tmp_path / "bert"
    code = ("import sys; from crossonnx.exporter.pipeline import export_model; "
            "export_model(sys.argv[1], out=sys.argv[2], precisions='fp32', log=None)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(checkpoint), str(out)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        def partial_exists() -> bool:
            assert killed.poll() is None, "the export ended before it could be killed"
            return any(tmp_path.glob(".bert.partial-*"))

        until(partial_exists)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        (left,) = tmp_path.glob(".bert.partial-*")  # what a killed export leaves behind
        match = PARTIAL.fullmatch(left.name)
        assert match and int(match.group(1)) == killed.pid
        host = match.group(2)
        running = tmp_path / f".bert.partial-{sleeper.pid}@{host}-running1"
        elsewhere = tmp_path / f".bert.partial-{killed.pid}@another-host-remote01"
        old_unowned, new_unowned = tmp_path / ".bert.partial-oldstyl1", tmp_path / ".bert.partial-oldstyl2"
        other_target = tmp_path / f".bert2.partial-{killed.pid}@{host}-othertgt"
        for folder in (running, elsewhere, old_unowned, new_unowned, other_target):
            folder.mkdir()
            (folder / "model_fp32.onnx").write_bytes(b"partial")
        two_days_ago = time.time() - 2 * 86400
        os.utime(old_unowned, (two_days_ago, two_days_ago))

        from crossonnx.exporter.pipeline import export_model

        lines: list[str] = []
        assert export_model(str(checkpoint), out=out, precisions="fp32", log=lines.append) == out
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not left.exists() and not old_unowned.exists()
    assert all(folder.exists() for folder in (running, elsewhere, new_unowned, other_target))
    removed = [line for line in lines if "removed stale" in line]
    assert len(removed) == 2, lines
    assert any(left.name in line and f"process {killed.pid}" in line for line in removed)
    assert any(old_unowned.name in line for line in removed)
    assert {p.name for p in tmp_path.glob(".bert.partial-*")} == {running.name, elsewhere.name, new_unowned.name}
