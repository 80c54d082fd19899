"""Resolve an export SOURCE (models.yaml name, Hub id or local checkpoint folder) to a local folder."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from crossonnx.errors import ExportError, UnknownModelError, missing_extra
from crossonnx.registry import ModelSpec, find_model, load_registry

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# files a sequence-classification checkpoint needs, at the repo's root only: onnx/, openvino/ and other folders
# hold other runtimes' copies (fnmatch's * also matches "/", so "*.json" alone would reach into them)
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "merges.txt", "vocab.*", "tokenizer*"]
HUB_IGNORE = ["*/*"]
# pickled weights: fetched only with --allow-pickle, and only when the repo has no safetensors
PICKLE_PATTERNS = ["pytorch_model.bin*"]
# a remote-code model's code (configuration_*.py, modeling_*.py, ...): fetched only with --trust-remote-code
CODE_PATTERNS = ["*.py"]


@dataclass(frozen=True)
class ResolvedSource:
    """A checkpoint folder on disk and where it came from."""

    path: Path
    kind: str  # "local", "hub" or "registry"
    id: str
    revision: str | None
    spec: ModelSpec | None

    @property
    def name(self) -> str:
        """A short name for default output folders."""
        if self.spec is not None:
            return self.spec.name
        return self.id.rstrip("/").split("/")[-1] or "model"

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "id": self.id,
            "revision": self.revision,
            "registry_name": self.spec.name if self.spec else None,
        }


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """A clear error unless the folder holds loadable weights under the user's pickle policy."""
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} has no config.json: it is not a Hugging Face checkpoint folder")
    if any((folder / name).is_file() for name in SAFE_WEIGHTS):
        return
    if any((folder / name).is_file() for name in PICKLED_WEIGHTS):
        if allow_pickle:
            return
        raise ExportError(
            f"{folder} has only pickled weights (pytorch_model.bin); loading a pickle can run arbitrary code. "
            "If you trust this checkpoint, pass --allow-pickle (allow_pickle=True), or convert it to safetensors."
        )
    raise ExportError(f"{folder} has no model weights (model.safetensors or pytorch_model.bin)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], cache_dir: str | None) -> Path:
    """snapshot_download with every failure turned into one ExportError line."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise missing_extra("export", "huggingface-hub", "exporting from the Hub") from None
    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=HUB_IGNORE, cache_dir=cache_dir
            )
        )
    except GatedRepoError as exc:
        from huggingface_hub import constants

        page = f"{constants.ENDPOINT}/{repo_id}"
        if getattr(getattr(exc, "response", None), "status_code", None) == 403:
            raise ExportError(
                f"{repo_id} is gated and your Hugging Face token has no access to it: accept its terms at {page}"
            ) from None
        raise ExportError(
            f"{repo_id} is gated on the Hub: accept its terms at {page} and log in (hf auth login, or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ExportError(f"no model {repo_id!r} on the Hugging Face Hub (or it is private: log in)") from None
    except RevisionNotFoundError:
        raise ExportError(f"{repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:  # also IncompleteSnapshotError: a cached snapshot lacks files
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face Hub cannot be reached"
        raise ExportError(
            f"{why} and {repo_id} is not (completely) in the local Hugging Face cache. Download it where the Hub is "
            f"reachable (hf download {repo_id}) and copy the cache or the folder here, then run "
            "crossonnx export <that folder>."
        ) from None
    except _transport_errors() as exc:  # a dropped connection, a short download
        raise ExportError(
            f"could not download {repo_id} from the Hugging Face Hub ({_why(exc)}); run the same command again "
            "to retry"
        ) from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """OSError and the HTTP client's own errors (httpx2 for huggingface_hub 2, httpx for 1): neither is an OSError."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(importlib.import_module(module).HTTPError)
    return tuple(errors)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _download(
    repo_id: str, revision: str | None, allow_pickle: bool, trust_remote_code: bool, cache_dir: str | None
) -> Path:
    """The checkpoint's files in the Hugging Face cache: config, tokenizer and weights at the repo's root, and its
    ``*.py`` files only with ``trust_remote_code``.

    Pickled weights are fetched only with ``allow_pickle`` and only when the repo has no safetensors (pinned to
    the commit just resolved, so the second call asks the Hub nothing more than the files).
    """
    folder = _snapshot(repo_id, revision, HUB_PATTERNS + (CODE_PATTERNS if trust_remote_code else []), cache_dir)
    if any((folder / name).is_file() for name in SAFE_WEIGHTS + PICKLED_WEIGHTS):
        return folder
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
    listed = _cached_tree(repo_id, commit, cache_dir)
    pickled = listed is None or any(name in listed for name in PICKLED_WEIGHTS)
    if pickled and allow_pickle:
        return _snapshot(repo_id, commit, PICKLE_PATTERNS, cache_dir)
    if pickled and listed is not None:
        raise ExportError(
            f"{repo_id} has only pickled weights (pytorch_model.bin) on the Hub; loading a pickle can run arbitrary "
            "code. If you trust this checkpoint, pass --allow-pickle (allow_pickle=True), or convert it to "
            "safetensors."
        )
    return folder  # check_weights names what is missing


def _cached_tree(repo_id: str, commit: str | None, cache_dir: str | None) -> set[str] | None:
    """The repo's file list as snapshot_download cached it (no request), or None where this client keeps none."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return {entry.path for entry in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache_dir)}
    except Exception:  # an older huggingface_hub, or no listing cached: the caller falls back
        return None


def resolve_source(
    source: str,
    revision: str | None = None,
    allow_pickle: bool = False,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
) -> ResolvedSource:
    """Find or download the checkpoint named by ``source`` (from the Hub, its code too with ``trust_remote_code``)."""
    if not isinstance(source, str) or not source.strip():
        raise ExportError("SOURCE must be a models.yaml name, a Hub id or a checkpoint folder")
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ExportError(f"{local} is a file; SOURCE must be a checkpoint folder")
        check_weights(local, allow_pickle)
        return ResolvedSource(local.resolve(), "local", str(local.resolve()), None, None)
    spec = find_model(source)
    if spec is not None:
        repo_id, kind = spec.hub_id, "registry"
    elif HUB_ID.match(source):
        repo_id, kind = source, "hub"
    else:
        known = ", ".join(load_registry())
        raise UnknownModelError(
            f"{source!r} is not a local folder, a models.yaml name or a Hub id (owner/name). Known models: {known}"
        )
    folder = _download(repo_id, revision, allow_pickle, trust_remote_code, cache_dir)
    check_weights(folder, allow_pickle)
    # snapshot folders are named by commit hash: record the exact revision exported
    resolved_revision = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
    return ResolvedSource(folder, kind, repo_id, resolved_revision, spec)
