"""A small Hugging Face Hub look-alike on 127.0.0.1, for testing the exporter's Hub path without a network.

It answers what huggingface_hub (2.x, httpx2) asks when it runs ``snapshot_download`` / ``hf_hub_download``:

- ``GET /api/agent-harnesses``: the registry huggingface_hub 2 fetches (at most daily) to build its user agent;

- ``GET /api/models/{repo_id}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``;
- ``GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=...``: the tree, paged with a ``Link: <...>; rel="next"``
  header as the Hub pages it (cursor in the query);
- ``HEAD``/``GET /{repo_id}/resolve/{rev}/{path}``: small (git) files with ``X-Repo-Commit``, ``ETag`` (the git
  blob sha) and ``Content-Length``; large (LFS) files with a 302 to a second listener on another port (the "CDN",
  another origin, so the client neither follows the HEAD there nor sends its token) carrying ``X-Linked-Etag``
  (sha256) and ``X-Linked-Size``;
- ``Range: bytes=N-`` on every download (206 + ``Content-Range``), which the client uses to resume;
- a renamed repo: the old id answers ``307`` with a relative ``Location`` on the new id, for ``/resolve`` and
  ``/api/models`` alike (the Hub redirects both; huggingface_hub follows relative redirects on HEAD by hand and
  the API session follows redirects);
- errors with the Hub's ``X-Error-Code``: ``RepoNotFound`` (401 for an anonymous caller, as the Hub answers so as
  not to reveal private repos; 404 with a token), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with
  ``X-Repo-Commit``), ``GatedRepo`` on a gated repo's files (401 without a token, 403 with one; its info and tree
  stay public, as on the Hub);
- a fault: ``cut(repo_id, path, at, times)`` makes the next ``times`` downloads of a file stop at byte ``at`` and
  drop the connection (a resumed ``Range`` request past ``at`` gets its headers and nothing else).

Every request is logged (``server.log``: method, path, status, the repo file it touched).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".ot", ".pt")
LAST_MODIFIED = "2025-03-07T10:00:00.000Z"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Repo:
    """A model repo: commits (sha -> {path: bytes}) and refs (branch -> sha)."""

    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        """Add a commit of ``files`` on ``branch``; returns its sha."""
        digest = hashlib.sha1(f"{self.repo_id}#{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha256(files[path]).digest())
        sha = digest.hexdigest()
        self.commits[sha] = dict(files)
        self.refs[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)

    @property
    def sha(self) -> str:
        return self.refs["main"]


@dataclass(frozen=True)
class Request:
    """One answered request."""

    method: str
    path: str  # with the query string
    status: int
    host: str  # "hub" or "cdn"
    file: str | None = None  # "repo_id:path" when the request served (or was about) one repo file
    range: str | None = None


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its posix path relative to it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubServer:
    """The Hub look-alike: ``url`` (HF_ENDPOINT), repos, renames, faults and the request log."""

    def __init__(self, page_size: int = 1000) -> None:
        self.repos: dict[str, Repo] = {}
        self.renamed: dict[str, str] = {}
        self.page_size = page_size
        self.log: list[Request] = []
        self._cuts: dict[tuple[str, str], list[int]] = {}  # (repo, path) -> [at, times left]
        self._lock = threading.Lock()
        self._hub = self._listen("hub")
        self._cdn = self._listen("cdn")
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in (self._hub, self._cdn)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ set-up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> Repo:
        repo = Repo(repo_id, gated=gated)
        repo.commit(files)
        self.repos[repo_id] = repo
        return repo

    def rename(self, old: str, new: str) -> None:
        """``old`` now redirects to ``new`` (an existing repo), as the Hub does after a rename."""
        self.renamed[old] = new

    def cut(self, repo_id: str, path: str, at: int, times: int = 1) -> None:
        """The next ``times`` downloads of ``path`` stop at byte ``at`` and drop the connection."""
        with self._lock:
            self._cuts[(repo_id, path)] = [at, times]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def files(self, method: str = "GET", repo_id: str | None = None) -> list[str]:
        """Repo paths requested with ``method`` (of ``repo_id``, or of every repo), in order."""
        out = []
        for entry in self.log:
            if entry.method == method and entry.file is not None:
                repo, path = entry.file.split(":", 1)
                if repo_id is None or repo == repo_id:
                    out.append(path)
        return out

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # ------------------------------------------------------------------ serving

    def _listen(self, host: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, host, head=False)

            def do_HEAD(self) -> None:
                hub._handle(self, host, head=True)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return server

    def _record(self, handler: BaseHTTPRequestHandler, host: str, status: int, file: str | None) -> None:
        with self._lock:
            self.log.append(Request(handler.command, handler.path, status, host, file, handler.headers.get("Range")))

    def _reply(
        self,
        handler: BaseHTTPRequestHandler,
        host: str,
        status: int,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        head: bool = False,
        file: str | None = None,
    ) -> None:
        self._record(handler, host, status, file)
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head and body:
            handler.wfile.write(body)

    def _json(self, handler: BaseHTTPRequestHandler, host: str, payload: object, extra: dict[str, str]) -> None:
        body = json.dumps(payload).encode()
        self._reply(handler, host, 200, {"Content-Type": "application/json", **extra}, body)

    def _error(
        self, handler: BaseHTTPRequestHandler, host: str, status: int, code: str, message: str, head: bool,
        extra: dict[str, str] | None = None, file: str | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
        headers.update(extra or {})
        self._reply(handler, host, status, headers, json.dumps({"error": message}).encode(), head, file)

    def _split_repo(self, parts: list[str]) -> tuple[str, list[str]]:
        return "/".join(parts[:2]), parts[2:]

    def _handle(self, handler: BaseHTTPRequestHandler, host: str, head: bool) -> None:
        split = urlsplit(handler.path)
        parts = [unquote(p) for p in split.path.split("/") if p]
        query = parse_qs(split.query)
        if host == "cdn":
            return self._serve_cdn(handler, parts, head)
        if parts == ["api", "agent-harnesses"]:  # huggingface_hub 2 fetches it once a day for its user agent
            return self._json(handler, host, {"standardEnvVars": [], "harnesses": {}}, {})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = self._split_repo(parts[2:])
            if repo_id in self.renamed:
                new = quote(f"/api/models/{self.renamed[repo_id]}/" + "/".join(rest)).rstrip("/")
                location = new + (f"?{split.query}" if split.query else "")
                return self._reply(handler, host, 307, {"Location": location}, head=head)
            return self._serve_api(handler, host, repo_id, rest, query, head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rest = self._split_repo(parts)
            if repo_id in self.renamed:
                location = quote(f"/{self.renamed[repo_id]}/" + "/".join(rest))
                return self._reply(handler, host, 307, {"Location": location}, head=head)
            return self._serve_resolve(handler, host, repo_id, rest[1], "/".join(rest[2:]), head)
        self._error(handler, host, 404, "NotFound", "Sorry, we can't find the page you are looking for.", head)

    def _repo_or_error(self, handler: BaseHTTPRequestHandler, host: str, repo_id: str, head: bool) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            status = 404 if handler.headers.get("Authorization") else 401
            self._error(handler, host, status, "RepoNotFound", "Repository not found", head)
        return repo

    def _serve_api(
        self, handler: BaseHTTPRequestHandler, host: str, repo_id: str, rest: list[str],
        query: dict[str, list[str]], head: bool,
    ) -> None:
        repo = self._repo_or_error(handler, host, repo_id, head)
        if repo is None:
            return
        revision = "main"
        if rest and rest[0] in ("revision", "tree"):
            revision = rest[1] if len(rest) > 1 else "main"
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(handler, host, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        files = repo.commits[sha]
        if not rest or rest[0] == "revision":
            info = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "lastModified": LAST_MODIFIED,
                "createdAt": LAST_MODIFIED,
                "private": False,
                "disabled": False,
                "gated": "auto" if repo.gated else False,
                "downloads": 0,
                "likes": 0,
                "library_name": "sentence-transformers",
                "pipeline_tag": "text-ranking",
                "tags": ["sentence-transformers", "safetensors", "text-ranking"],
                "siblings": [{"rfilename": path} for path in sorted(files)],
            }
            return self._json(handler, host, info, {})
        # tree: /tree/{rev}[/{path}]
        prefix = "/".join(rest[2:])
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries = self._tree(files, prefix, recursive)
        if prefix and not entries:
            return self._error(handler, host, 404, "EntryNotFound", f"{prefix} does not exist on {revision}", head)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.page_size]
        extra = {}
        if start + self.page_size < len(entries):
            next_query = {k: v[0] for k, v in query.items()}
            next_query["cursor"] = str(start + self.page_size)
            path = urlsplit(handler.path).path
            extra["Link"] = f'<{self.url}{path}?{urlencode(next_query)}>; rel="next"'
        self._json(handler, host, page, extra)

    @staticmethod
    def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, object]]:
        base = f"{prefix}/" if prefix else ""
        folders: set[str] = set()
        entries: list[dict[str, object]] = []
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rel = path[len(base) :].split("/")
            for depth in range(1, len(rel)):
                if recursive or depth == 1:
                    folders.add(base + "/".join(rel[:depth]))
            if len(rel) > 1 and not recursive:
                continue
            data = files[path]
            entry: dict[str, object] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
            if is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        return entries

    def _serve_resolve(
        self, handler: BaseHTTPRequestHandler, host: str, repo_id: str, revision: str, path: str, head: bool
    ) -> None:
        repo = self._repo_or_error(handler, host, repo_id, head)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(handler, host, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        file = f"{repo_id}:{path}"
        if repo.gated:
            if handler.headers.get("Authorization"):
                status, message = 403, (
                    f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                    f"Visit {self.url}/{repo_id} to ask for access."
                )
            else:
                status, message = 401, (
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in."
                )
            return self._error(handler, host, status, "GatedRepo", message, head, file=file)
        data = repo.commits[sha].get(path)
        if data is None:
            return self._error(
                handler, host, 404, "EntryNotFound", "Entry not found", head, {"X-Repo-Commit": sha}, file
            )
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if is_lfs(path):
            digest = hashlib.sha256(data).hexdigest()
            location = f"{self.cdn_url}/repos/{quote(repo_id)}/{digest}?filename={quote(path, safe='')}"
            headers = {
                **common,
                "Location": location,
                "ETag": f'"{git_blob_sha(data)}"',
                "X-Linked-Etag": f'"{digest}"',
                "X-Linked-Size": str(len(data)),
            }
            return self._reply(handler, host, 302, headers, b"Found. Redirecting", head, file)
        self._send_file(handler, host, repo_id, path, data, {**common, "ETag": f'"{git_blob_sha(data)}"'}, head)

    def _serve_cdn(self, handler: BaseHTTPRequestHandler, parts: list[str], head: bool) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        repo_id, digest = "/".join(parts[1:3]), parts[3] if len(parts) > 3 else ""
        path = query.get("filename", [""])[0]
        repo = self.repos.get(repo_id)
        data = None
        if repo is not None:
            data = next(
                (f[path] for f in repo.commits.values() if path in f and hashlib.sha256(f[path]).hexdigest() == digest),
                None,
            )
        if data is None:
            return self._reply(handler, "cdn", 403, {"Content-Type": "text/plain"}, b"AccessDenied", head)
        self._send_file(handler, "cdn", repo_id, path, data, {"ETag": f'"{digest}"'}, head)

    def _send_file(
        self, handler: BaseHTTPRequestHandler, host: str, repo_id: str, path: str, data: bytes,
        headers: dict[str, str], head: bool,
    ) -> None:
        file = f"{repo_id}:{path}"
        start, status = 0, 200
        headers = {**headers, "Content-Type": "application/octet-stream"}
        wanted = handler.headers.get("Range")
        if wanted and not head:
            try:
                first = wanted.split("=", 1)[1].split("-", 1)
                start = int(first[0])
                end = int(first[1]) if first[1] else len(data) - 1
            except (IndexError, ValueError):
                return self._reply(handler, host, 400, {}, b"bad Range", head, file)
            if start >= len(data):
                return self._reply(handler, host, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", head, file)
            data_slice = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(data_slice) - 1}/{len(data)}"
        else:
            data_slice = data
        cut = None
        if not head:
            with self._lock:
                rule = self._cuts.get((repo_id, path))
                if rule is not None and rule[1] > 0:
                    rule[1] -= 1
                    cut = rule[0]
        if cut is None:
            return self._reply(handler, host, status, headers, data_slice, head, file)
        # the fault: promise the whole range, send up to byte `cut` of the file, then drop the connection
        self._record(handler, host, -status, file)  # a negative status marks a dropped response
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data_slice)))
        handler.end_headers()
        sent = data_slice[: max(cut - start, 0)]
        if sent:
            handler.wfile.write(sent)
        handler.wfile.flush()
        handler.close_connection = True
        try:
            import socket

            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---------------------------------------------------------------------- repos laid out like the real ones


SPECIAL_TOKENS_MAP = {
    "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]",
}
# what a sentence-transformers export adds to a cross-encoder repo (the contents do not matter here)
EXTRA_FILES = (
    "tf_model.h5", "flax_model.msgpack", "onnx/model.onnx", "onnx/model_O1.onnx", "onnx/model_O4.onnx",
    "onnx/model_qint8_avx512.onnx", "onnx/model_quint8_avx2.onnx", "openvino/openvino_model.xml",
    "openvino/openvino_model.bin", "openvino/openvino_model_qint8_quantized.xml",
    "openvino/openvino_model_qint8_quantized.bin",
)


def pickled_state_dict(folder: Path) -> bytes:
    """``pytorch_model.bin``: the checkpoint's safetensors weights as a torch pickle (what older repos hold)."""
    import io

    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save(load_file(folder / "model.safetensors"), buffer)
    return buffer.getvalue()


def hub_layout(
    checkpoint: Path, safetensors: bool = True, pickle: bool = True, extras: bool = True
) -> dict[str, bytes]:
    """The files of a cross-encoder repo as the Hub holds them, from a local checkpoint folder.

    config.json, model.safetensors and/or pytorch_model.bin (a real torch pickle of the same weights), a BERT
    tokenizer without tokenizer.json (vocab.txt, tokenizer_config.json, special_tokens_map.json: transformers
    converts the fast tokenizer on load), README.md, .gitattributes, and other frameworks' and runtimes' files
    (tf/flax weights, onnx/, openvino/: placeholder bytes).
    """
    files = {name: data for name, data in folder_files(checkpoint).items() if name != "tokenizer.json"}
    files["special_tokens_map.json"] = json.dumps(SPECIAL_TOKENS_MAP).encode()
    if pickle:
        files["pytorch_model.bin"] = pickled_state_dict(checkpoint)
    if not safetensors:
        files.pop("model.safetensors", None)
    if extras:
        for name in EXTRA_FILES:
            files[name] = hashlib.sha256(name.encode()).digest() * 64
    files["README.md"] = b"---\nlibrary_name: sentence-transformers\npipeline_tag: text-ranking\n---\n# A test repo\n"
    files[".gitattributes"] = b"".join(
        b"*%s filter=lfs diff=lfs merge=lfs -text\n" % suffix.encode() for suffix in LFS_SUFFIXES
    )
    return files


REMOTE_CODE_FILE = "modeling_crossencoder.py"
# a remote-code model's code: BERT's classifier under its own name (transformers imports it from the repo's files)
REMOTE_CODE = b'''"""A cross-encoder whose code lives in its repo."""

from transformers import BertForSequenceClassification


class RepoBertForSequenceClassification(BertForSequenceClassification):
    """BERT's sequence classifier, run from the repo's own code."""
'''


def remote_code_layout(checkpoint: Path) -> dict[str, bytes]:
    """A repo whose config maps AutoModelForSequenceClassification to its own ``*.py`` (``auto_map``), as a
    trust_remote_code model's does; with trust_remote_code=False transformers runs its built-in BERT class instead."""
    files = hub_layout(checkpoint, pickle=False, extras=False)
    config = json.loads(files["config.json"])
    module = REMOTE_CODE_FILE.removesuffix(".py")
    config["auto_map"] = {"AutoModelForSequenceClassification": f"{module}.RepoBertForSequenceClassification"}
    files["config.json"] = json.dumps(config, indent=2).encode()
    files[REMOTE_CODE_FILE] = REMOTE_CODE
    return files


@contextmanager
def running_hub(page_size: int = 1000) -> Iterator[HubServer]:
    server = HubServer(page_size=page_size)
    try:
        yield server
    finally:
        server.close()
