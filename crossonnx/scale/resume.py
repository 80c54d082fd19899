"""`score-file --resume`: the journal that lets a killed job continue from its last completed chunk.

A run keeps its state in a folder beside the output, ``.<out name>.partial/``: the partial output and a journal.
The journal's first line is a JSON fingerprint of everything that decides the output's bytes (the input's size and
SHA-256, the model's graph and tokenizer checksums, the engine and its version, every option that changes a score
or the chunking); after it come binary records, one per completed chunk: its row count, its capped rows and its
float32 scores, with a CRC. Each record is fsync'ed before the next chunk starts.

The checkpoint is the scores, not the output's bytes: on resume the input is read again from its first row, the
chunks the journal holds are written with their saved scores (no model call) and the rest are scored. The output is
so written start to end by the same writer from the same values as in an uninterrupted run, byte for byte, in every
format (a Parquet file cut off mid-write has no footer to append to). A torn last record (killed mid-write) fails its
CRC and is dropped. The journal is locked while a run holds it, so two runs cannot write the same output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from crossonnx.scale import ScaleError

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

VERSION = 1
JOURNAL = "journal"
RECORD = struct.Struct("<4sIII")  # magic, rows, capped rows, crc32 of the rest of the header and the scores
MAGIC = b"CHNK"
HEADER_LIMIT = 1 << 20

# Fingerprint keys as the user names them: the flag, then the Python argument where it differs.
NAMES = {
    "format": "--format",
    "query_column": "--query-column",
    "passage_column": "--passage-column",
    "score_column": "--score-column",
    "precision": "--precision (the precision it resolved to)",
    "provider": "--provider (the provider it resolved to)",
    "threads": "--threads",
    "batch_size": "--batch-size",
    "chunk_rows": "--chunk-rows",
    "raw_scores": "--raw-scores",
    "max_length": "max_length (CrossEncoder)",
    "token_budget": "token_budget (CrossEncoder)",
    "num_labels": "the model's number of labels",
    "long_documents.mode": "--long-documents",
    "engine": "the engine",
    "engine_version": "the engine's version",
    "crossonnx": "the crossonnx version",
}


def state_folder(out: Path) -> Path:
    """Where a run writing ``out`` keeps its partial output and journal."""
    return out.with_name(f".{out.name}.partial")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(source: Path, encoder: Any, options: dict[str, Any]) -> dict[str, Any]:
    """What decides the output's bytes: the input, the model, the engine and ``options`` (flat, JSON values)."""
    from crossonnx import __version__

    manifest = encoder.manifest
    info = encoder.info()
    entry = manifest.precisions.get(encoder.precision)
    model = {
        "graph": info.get("graph"),
        "graph_sha256": entry.sha256 if entry is not None else None,
        "extra_files": {name: record["sha256"] for name, record in entry.extra_files.items()} if entry else {},
        "tokenizer_sha256": manifest.tokenizer.sha256,
        "activation": manifest.activation,
        "inputs": list(manifest.inputs),
    }
    settings = {
        **options,
        "precision": encoder.precision,
        "provider": encoder.provider,
        "threads": encoder.threads,
        "max_length": encoder.max_length,
        "token_budget": encoder.token_budget,
        "num_labels": encoder.num_labels,
        "engine": info.get("engine"),
        "engine_version": info.get("engine_version"),
        "crossonnx": __version__,
    }
    return {
        "input": {"path": str(source.resolve()), "bytes": source.stat().st_size, "sha256": _sha256(source)},
        "model": {"path": str(Path(encoder.model_dir).resolve()), "checksum": _digest(model)},
        "options": json.loads(json.dumps(settings)),  # as read back from the journal (tuples become lists)
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _flat(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, in the user's words."""
    changes = []
    old_input, new_input = before.get("input", {}), now["input"]
    if old_input.get("sha256") != new_input["sha256"]:
        size = (
            f"{new_input['bytes']:,} bytes, was {old_input.get('bytes', 0):,}"
            if old_input.get("bytes") != new_input["bytes"]
            else "same size, other content"
        )
        old_path = old_input.get("path")
        moved = "" if old_path == new_input["path"] else f" (the interrupted run read {old_path})"
        changes.append(f"the input changed: {new_input['path']} has {size}{moved}")
    old_model, new_model = before.get("model", {}), now["model"]
    if old_model.get("checksum") != new_model["checksum"]:
        changes.append(
            f"the model changed: {new_model['path']} is not the graph and tokenizer the interrupted run used "
            f"({old_model.get('path')})"
        )
    old, new = _flat(before.get("options", {})), _flat(now["options"])
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            name = NAMES.get(key) or "--" + key.split(".")[-1].replace("_", "-")
            changes.append(f"{name} is {new.get(key)!r}, the interrupted run used {old.get(key)!r}")
    return changes


@dataclass
class Record:
    """One completed chunk as the journal holds it."""

    rows: int
    capped: int
    offset: int  # where its scores start in the journal


class Journal:
    """The state of one run writing ``out``: locked for the run's life; see the module docstring."""

    def __init__(self, out: Path, labels: int):
        self.out, self.labels = out, labels
        self.folder = state_folder(out)
        self.partial = self.folder / out.name
        self.records: list[Record] = []
        self.file: BinaryIO | None = None
        self.end = 0

    @property
    def rows(self) -> int:
        return sum(record.rows for record in self.records)

    @property
    def capped(self) -> int:
        return sum(record.capped for record in self.records)

    # ------------------------------------------------------------------------------------------- opening

    def open(self, fingerprint: dict[str, Any], resume: bool) -> None:
        """Lock the journal and start it, or (``resume``) check it against ``fingerprint`` and keep its records.

        Raises ``ScaleError`` when another run holds it, when a run left rows and ``resume`` is False, and when
        ``resume`` finds that the input, model or an option changed."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ScaleError(f"{self.folder} is in the way of score-file's partial output; remove it") from None
        self.file = open(self.folder / JOURNAL, "a+b")  # noqa: SIM115 - closed by close(); writes go to the end
        if fcntl is not None:
            try:
                fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.close()
                raise ScaleError(
                    f"another score-file run is writing {self.out} right now (it holds {self.folder}); wait for it "
                    "to finish, or write to another --out"
                ) from None
        header, self.end = self._read_header()
        if header is not None:  # scanned with the labels the records were written with
            self.records, self.end = self._scan(self.end, int(header.get("options", {}).get("num_labels", 1)))
        if header is None or not self.records:
            self._start(fingerprint)  # nothing done yet: nothing to keep
            return
        if not resume:
            rows = self.rows
            self.close()
            raise ScaleError(
                f"{self.out}: an interrupted run left {rows:,} scored rows in {self.folder}; pass --resume to "
                f"continue from row {rows + 1:,}, or delete {self.folder} to start over"
            )
        changes = differences(header, fingerprint)
        if changes:
            self.close()
            raise ScaleError(
                f"cannot resume {self.out}: " + "; ".join(changes) + ". Run it with the input, model and options of "
                f"the interrupted run, or delete {self.folder} to start over"
            )
        self.file.truncate(self.end)  # a torn last record goes

    def _start(self, fingerprint: dict[str, Any]) -> None:
        self.records = []
        header = json.dumps({"crossonnx_resume": VERSION, **fingerprint}).encode() + b"\n"
        self.file.truncate(0)  # type: ignore[union-attr]
        self._write(header)
        self.end = len(header)

    def _read_header(self) -> tuple[dict[str, Any] | None, int]:
        head = self._read(0, HEADER_LIMIT)
        line, newline, _ = head.partition(b"\n")
        if not newline:
            return None, 0
        try:
            header = json.loads(line)
        except ValueError:
            return None, 0
        if not isinstance(header, dict) or header.get("crossonnx_resume") != VERSION:
            return None, 0
        return header, len(line) + 1

    def _scan(self, offset: int, labels: int) -> tuple[list[Record], int]:
        """The records that are whole and pass their CRC, and where the last one ends."""
        assert self.file is not None
        length = os.fstat(self.file.fileno()).st_size
        records = []
        while True:
            head = self._read(offset, RECORD.size)
            if len(head) < RECORD.size:
                break
            magic, rows, capped, crc = RECORD.unpack(head)
            size = rows * labels * 4
            if magic != MAGIC or offset + RECORD.size + size > length:
                break
            data = self._read(offset + RECORD.size, size)
            if magic != MAGIC or len(data) < size or zlib.crc32(data, zlib.crc32(head[4:12])) != crc:
                break
            records.append(Record(rows, capped, offset + RECORD.size))
            offset += RECORD.size + size
        return records, offset

    # ----------------------------------------------------------------------------------------- the run

    def saved(self) -> Iterator[tuple[Record, np.ndarray]]:
        """The completed chunks, in order, with their scores ((rows,) or (rows, labels) float32)."""
        for record in list(self.records):
            data = self._read(record.offset, record.rows * self.labels * 4)
            scores = np.frombuffer(data, dtype="<f4").astype(np.float32)
            yield record, scores if self.labels == 1 else scores.reshape(record.rows, self.labels)

    def append(self, scores: np.ndarray, capped: int) -> None:
        """Record one completed chunk durably (written and fsync'ed)."""
        data = np.ascontiguousarray(scores, dtype="<f4").tobytes()
        rows = len(scores)
        fields = struct.pack("<II", rows, capped)
        head = MAGIC + fields + struct.pack("<I", zlib.crc32(data, zlib.crc32(fields)))
        self._write(head + data)
        self.records.append(Record(rows, capped, self.end + RECORD.size))
        self.end += RECORD.size + len(data)

    def finish(self) -> None:
        """Put the partial output in place (fsync'ed, renamed atomically over ``out``), then drop the state."""
        _fsync_file(self.partial)
        os.replace(self.partial, self.out)
        _fsync_dir(self.out.parent)
        self.discard()

    def discard(self) -> None:
        """Remove the partial output and the journal (the run failed on its input: resuming would fail again)."""
        shutil.rmtree(self.folder, ignore_errors=True)  # under the lock
        self.close()
        if self.folder.exists():  # where an open file cannot be removed
            shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        """Release the lock, keeping the state for a later --resume."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def _read(self, offset: int, size: int) -> bytes:
        assert self.file is not None
        self.file.seek(offset)
        return self.file.read(size)

    def _write(self, data: bytes) -> None:
        """Append ``data`` and make it durable."""
        assert self.file is not None
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
