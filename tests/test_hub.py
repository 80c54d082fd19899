"""`crossonnx export` from the Hub, through the real huggingface_hub client and the real CLI, against a Hub-shaped
server on 127.0.0.1 (tests/hub_server.py) that serves tiny offline checkpoints laid out like the real repos.

Each export runs ``python -m crossonnx.cli export ... --precision fp32`` in a subprocess with HF_ENDPOINT on the
server, HF_HUB_OFFLINE unset (the suite sets it) unless a test sets it, and HF_HOME in this module's tmp folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_server import REMOTE_CODE_FILE, HubServer, hub_layout, remote_code_layout, running_hub

ROOT = Path(__file__).resolve().parent.parent
NEW_ID = "cross-encoder/ms-marco-TinyBERT-L6"  # renamed in March 2025
OLD_ID = "cross-encoder/ms-marco-TinyBERT-L-6"  # models.yaml's id for ms-marco-TinyBERT-L-6; the Hub redirects it
PICKLE_ID = "test-org/tinybert-pickle-only"
GATED_ID = "test-org/tinybert-gated"
CUT_ID = "test-org/tinybert-cut"
REMOTE_ID = "test-org/tinybert-remote-code"
# what an export of a BERT checkpoint needs; everything else in the repo must stay on the server
NEEDED = {"config.json", "model.safetensors", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    from crossonnx.checkpoints.synthetic import build_tiny

    checkpoint = build_tiny("bert", tmp_path_factory.mktemp("hub-ckpt") / "bert", seed=1)
    full = hub_layout(checkpoint)
    with running_hub(page_size=5) as server:  # 5 entries a page: the tree listing is paged
        repo = server.add_repo(NEW_ID, full)
        # a later commit on main: --revision can pin the first one
        repo.commit({**full, "README.md": full["README.md"] + b"\nUpdated.\n"})
        server.rename(OLD_ID, NEW_ID)
        server.add_repo(PICKLE_ID, hub_layout(checkpoint, safetensors=False, extras=False))
        server.add_repo(GATED_ID, full, gated=True)
        server.add_repo(CUT_ID, {**hub_layout(checkpoint, pickle=False, extras=False), **padded_weights(checkpoint)})
        server.add_repo(REMOTE_ID, remote_code_layout(checkpoint))
        yield server


def padded_weights(checkpoint: Path) -> dict[str, bytes]:
    """model.safetensors with an unused 12 MB tensor: huggingface_hub reads downloads in 10 MiB chunks and resumes
    (Range) only from the last whole chunk, so only a file over 10 MiB shows a resumed download."""
    import numpy as np
    from safetensors.numpy import load_file, save

    tensors = load_file(checkpoint / "model.safetensors")
    tensors["unused_padding"] = np.zeros(3_000_000, dtype=np.float32)
    return {"model.safetensors": save(tensors)}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


def export(
    hub: HubServer, hf_home: Path, *args: str, offline: bool = False, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    command = [sys.executable, "-m", "crossonnx.cli", "export", *args, "--precision", "fp32"]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "crossonnx.json").read_text(encoding="utf-8"))


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("crossonnx: error: ")]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_registry_name_follows_the_rename_and_downloads_only_what_it_needs(hub: HubServer, hf_home: Path, tmp_path):
    hub.clear_log()
    out = tmp_path / "tinybert"
    done = export(hub, hf_home, "ms-marco-TinyBERT-L-6", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    source = manifest(out)["source"]
    assert source == {
        "kind": "registry", "id": OLD_ID, "revision": hub.repos[NEW_ID].sha, "registry_name": "ms-marco-TinyBERT-L-6",
    }
    # the old id answered 307 with a relative Location, for the API and for /resolve alike
    redirects = [r for r in hub.log if r.status == 307]
    assert any(r.path.startswith(f"/api/models/{OLD_ID}/revision/main") for r in redirects)
    assert any(r.path.startswith(f"/{OLD_ID}/resolve/") for r in redirects)
    assert any("cursor=" in r.path and r.status == 200 for r in hub.log)  # the paged tree was followed
    # only the export's files were asked for: no pickle, no tf/flax weights, nothing under onnx/ or openvino/
    assert set(hub.files("GET", NEW_ID)) == NEEDED
    assert set(hub.files("HEAD", NEW_ID)) <= NEEDED
    assert not [r for r in hub.log if r.status >= 400], hub.log
    # the tokenizer had no tokenizer.json on the Hub: the export wrote the converted fast tokenizer
    assert (out / "tokenizer.json").is_file()


def test_new_id_with_a_pinned_revision_then_offline_from_the_cache(hub: HubServer, hf_home: Path, tmp_path):
    first = next(iter(hub.repos[NEW_ID].commits))
    assert first != hub.repos[NEW_ID].sha
    hub.clear_log()
    done = export(hub, hf_home, NEW_ID, "--revision", first, "--out", str(tmp_path / "pinned"))
    assert done.returncode == 0, done.stderr[-3000:]
    source = manifest(tmp_path / "pinned")["source"]
    assert source == {"kind": "hub", "id": NEW_ID, "revision": first, "registry_name": None}
    resolves = [r.path for r in hub.log if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{first}/" in path for path in resolves)
    assert not any("/api/models" in r.path and "/revision/" in r.path for r in hub.log)  # a sha needs no lookup
    assert set(hub.files("GET", NEW_ID)) == NEEDED

    hub.clear_log()
    done = export(hub, hf_home, NEW_ID, "--revision", first, "--out", str(tmp_path / "offline"), offline=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub.log == []  # not one request
    assert manifest(tmp_path / "offline")["source"]["revision"] == first


def test_pickle_only_repo_needs_allow_pickle(hub: HubServer, hf_home: Path, tmp_path):
    out = tmp_path / "pickle"
    hub.clear_log()
    done = export(hub, hf_home, PICKLE_ID, "--out", str(out))
    assert_one_line_error(done, PICKLE_ID, "pickled weights", "--allow-pickle")
    assert not out.exists()
    assert "pytorch_model.bin" not in hub.files("GET") + hub.files("HEAD")

    hub.clear_log()
    done = export(hub, hf_home, PICKLE_ID, "--out", str(out), "--allow-pickle")
    assert done.returncode == 0, done.stderr[-3000:]
    # the refused run cached the config and tokenizer: this one fetches the pickle alone
    assert hub.files("GET", PICKLE_ID) == ["pytorch_model.bin"]
    assert manifest(out)["source"]["revision"] == hub.repos[PICKLE_ID].sha


def test_remote_code_is_fetched_only_with_trust_remote_code(hub: HubServer, hf_home: Path, tmp_path):
    """A repo with its own model code: without the flag its *.py is never asked for (transformers runs its built-in
    BERT class, whose last layer the export prunes to [CLS]); with it, the code is downloaded and runs."""
    hub.clear_log()
    plain = export(hub, hf_home, REMOTE_ID, "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    asked = hub.files("GET", REMOTE_ID) + hub.files("HEAD", REMOTE_ID)
    assert asked and not [path for path in asked if path.endswith(".py")], asked
    assert manifest(tmp_path / "plain")["precisions"]["fp32"]["details"]["cls_only_last_layer"] is True

    hub.clear_log()
    trusted = export(hub, hf_home, REMOTE_ID, "--out", str(tmp_path / "trusted"), "--trust-remote-code")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert [path for path in hub.files("GET", REMOTE_ID) if path.endswith(".py")] == [REMOTE_CODE_FILE]
    # the repo's class ran: it is not the built-in BERT class the [CLS]-only last layer is proven for
    assert manifest(tmp_path / "trusted")["precisions"]["fp32"]["details"]["cls_only_last_layer"] is False
    assert manifest(tmp_path / "trusted")["source"]["revision"] == hub.repos[REMOTE_ID].sha


@pytest.mark.parametrize(
    ("case", "args", "token", "needles"),
    [
        ("missing repo", ["test-org/no-such-model"], None, ["no model 'test-org/no-such-model'"]),
        ("missing revision", [NEW_ID, "--revision", "v9.9"], None, [NEW_ID, "has no revision 'v9.9'"]),
        ("gated, anonymous (401)", [GATED_ID], None, [GATED_ID, "gated", "log in"]),
        ("gated, token without access (403)", [GATED_ID], "hf_test_token", [GATED_ID, "gated", "accept its terms"]),
    ],
)
def test_hub_errors_are_one_line_and_leave_nothing(hub, hf_home, tmp_path, case, args, token, needles):
    out = tmp_path / "out"
    hub.clear_log()
    done = export(hub, hf_home, *args, "--out", str(out), token=token)
    assert_one_line_error(done, *needles)
    assert not out.exists()
    if "gated" in case:
        status = 403 if token else 401
        assert any(r.status == status and "/resolve/" in r.path for r in hub.log), hub.log


def test_a_download_cut_off_fails_clearly_and_the_next_run_completes_it(hub: HubServer, hf_home: Path, tmp_path):
    size = len(hub.repos[CUT_ID].commits[hub.repos[CUT_ID].sha]["model.safetensors"])
    at, chunk = 11 * 2**20, 10 * 2**20  # the cut, and the client's read size (it resumes from the last whole chunk)
    assert size > at
    out = tmp_path / "cut"
    # every try stops at 11 MiB: the client resumes from 10 MiB (Range) a few times, gets no whole chunk, gives up
    hub.cut(CUT_ID, "model.safetensors", at=at, times=100)
    hub.clear_log()
    done = export(hub, hf_home, CUT_ID, "--out", str(out))
    assert_one_line_error(done, "could not download", CUT_ID, "again")
    assert not out.exists()
    dropped = [r for r in hub.log if r.status < 0]
    assert len(dropped) > 1 and any(r.range == f"bytes={chunk}-" for r in dropped), dropped

    # the next run: the connection drops once more, the client resumes with a Range request, and it ends
    hub.cut(CUT_ID, "model.safetensors", at=at, times=1)
    hub.clear_log()
    done = export(hub, hf_home, CUT_ID, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(r.status == 206 and r.range == f"bytes={chunk}-" for r in hub.log), hub.log
    assert manifest(out)["source"]["revision"] == hub.repos[CUT_ID].sha
