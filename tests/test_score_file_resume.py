"""`score-file --resume`: a run SIGKILLed (or interrupted) after some chunks and resumed writes the bytes an
uninterrupted run writes, in every format; a resume with another input, model or option is refused, naming it."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pairs
from crossonnx import CrossEncoder, LongDocuments
from crossonnx.scale import ScaleError
from crossonnx.scale.columns import Columns
from crossonnx.scale.files import score_file
from crossonnx.scale.resume import JOURNAL, RECORD, state_folder
from pairs import parity_pairs

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CHUNK = 8
ROWS = 400  # 50 chunks: the kills land well before the end
CLI = "import sys; from crossonnx.cli import main; sys.exit(main(sys.argv[1:]))"
BASE = ["--chunk-rows", str(CHUNK), "--batch-size", "2", "--threads", "1", "--provider", "cpu", "--no-progress"]
CHUNKED = ["--long-documents", "chunk", "--chunk-tokens", "12"]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    pairs = [*parity_pairs(48, seed=5), ('say "hi", ok', "a,b,c\r\nd"), ("", ""), ("\u2028", "'\"")]
    return [{"id": i, "query": q, "passage": p} for i, (q, p) in enumerate((pairs * 9)[:ROWS])]


def write_rows(path: Path, fmt: str, rows: list[dict]) -> Path:
    return pairs.write_rows(path, fmt, rows, row_group_size=64)


def read_ids(path: Path, fmt: str) -> list[int]:
    if fmt == "parquet":
        return pq.read_table(path).column("id").to_pylist()
    if fmt == "jsonl":
        return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").split("\n") if line]
    with open(path, encoding="utf-8", newline="") as handle:
        return [int(row["id"]) for row in csv.DictReader(handle)]


def command(model: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CLI, "score-file", str(model), str(src), "--out", str(out), *BASE, *extra]


def chunks_done(out: Path, labels: int = 1) -> int:
    """Whole chunk records in the journal of the run writing ``out`` (every chunk but the last has CHUNK rows)."""
    try:
        data = (state_folder(out) / JOURNAL).read_bytes()
    except FileNotFoundError:
        return 0
    header = data.find(b"\n") + 1
    return 0 if header == 0 else (len(data) - header) // (RECORD.size + CHUNK * labels * 4)


def run_until(cmd: list[str], out: Path, chunks: int, sig: int = signal.SIGKILL, labels: int = 1) -> str:
    """Start ``cmd``, send ``sig`` once its journal holds ``chunks`` chunks, and return its stderr."""
    # the child gets SIGINT's default (Python's KeyboardInterrupt) even where this suite was started with SIGINT
    # ignored (a shell's background job), as a user's Ctrl-C finds it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if chunks_done(out, labels) >= chunks:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), f"not stopped at chunk {chunks}: {err}"
    return err


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr


def capped_note(err: str) -> str:
    return "".join(re.findall(r"; [\d,]+ passages had more than \d+ windows", err))


@pytest.fixture(scope="module")
def two_label_dir(work_dir) -> Path:
    from crossonnx.checkpoints.synthetic import build_tiny
    from crossonnx.exporter.pipeline import export_model

    checkpoint = build_tiny("bert", work_dir / "ckpt" / "bert-2-labels-resume", seed=4, num_labels=2)
    return export_model(str(checkpoint), out=work_dir / "onnx" / "bert-2-labels-resume", precisions="fp32", log=None)


@pytest.mark.parametrize(
    ("fmt", "labels", "extra"),
    [("jsonl", 1, []), ("csv", 1, CHUNKED), ("parquet", 1, []), ("parquet", 2, ["--raw-scores"])],
    ids=["jsonl", "csv-chunk-mode", "parquet", "parquet-two-labels"],
)
def test_killed_twice_then_resumed_writes_the_uninterrupted_bytes(tmp_path, request, rows, fmt, labels, extra):
    model = request.getfixturevalue("model_dir" if labels == 1 else "two_label_dir")
    src = write_rows(tmp_path / f"pairs.{fmt}", fmt, rows)
    want, out = tmp_path / f"want.{fmt}", tmp_path / f"out.{fmt}"
    want_err = run(command(model, src, want, "--resume", *extra))  # nothing to resume: a plain run
    assert "nothing to resume" in want_err and not state_folder(want).exists()

    # seeded kill points: after k1 chunks (SIGINT for JSON lines: Ctrl-C), then again after k2 > k1
    rng = random.Random(f"{fmt}-{labels}")
    k1 = rng.randint(1, 12)
    k2 = rng.randint(k1 + 2, 24)
    first = signal.SIGINT if fmt == "jsonl" else signal.SIGKILL
    err = run_until(command(model, src, out, *extra), out, k1, first, labels)
    if first == signal.SIGINT:
        assert "--resume to continue" in err
    assert not out.exists() and chunks_done(out, labels) >= k1
    refused = subprocess.run(command(model, src, out, *extra), capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "pass --resume to continue" in refused.stderr, refused.stderr
    run_until(command(model, src, out, "--resume", *extra), out, k2, labels=labels)
    assert not out.exists() and chunks_done(out, labels) >= k2
    err = run(command(model, src, out, "--resume", *extra))

    resumed = int(re.search(r"resumed after ([\d,]+) rows", err).group(1).replace(",", ""))
    assert resumed >= k2 * CHUNK and resumed % CHUNK == 0
    assert out.read_bytes() == want.read_bytes()
    assert read_ids(out, fmt) == list(range(ROWS))  # every row once, in order
    assert capped_note(err) == capped_note(want_err)  # the capped count covers the rows scored before the kills
    assert not state_folder(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [src.name, want.name, out.name]
    )


@pytest.fixture(scope="module")
def killed(tmp_path_factory, model_dir, rows) -> tuple[Path, Path, bytes]:
    """A JSON-lines run SIGKILLed after 5 chunks: (input, output path, what an uninterrupted run writes)."""
    folder = tmp_path_factory.mktemp("killed")
    src = write_rows(folder / "pairs.jsonl", "jsonl", rows[:200])
    want = folder / "want.jsonl"
    run(command(model_dir, src, want))
    out = folder / "out.jsonl"
    run_until(command(model_dir, src, out), out, 5)
    return src, out, want.read_bytes()


def journal_bytes(out: Path) -> bytes:
    return (state_folder(out) / JOURNAL).read_bytes()


def test_resume_refuses_another_input_model_or_option_and_names_it(tmp_path, killed, encoder, tiny_exports,
                                                                   two_label_dir):
    src, out, want = killed
    kept = journal_bytes(out)
    kwargs = {"chunk_rows": CHUNK, "batch_size": 2, "progress": False, "resume": True}

    def refused(match: str, encoder=encoder, source: Path = src, **changes) -> None:
        with pytest.raises(ScaleError, match=match) as info:
            score_file(encoder, source, out, **{**kwargs, **changes})
        assert f"delete {state_folder(out)} to start over" in str(info.value)
        assert journal_bytes(out) == kept and not out.exists()  # a refusal leaves the state as it was

    refused(r"--chunk-rows is 16, the interrupted run used 8", chunk_rows=16)
    refused(r"--batch-size is 4, the interrupted run used 2", batch_size=4)
    refused(r"--raw-scores is True, the interrupted run used False", raw_scores=True)
    refused(r"--score-column is 'rel', the interrupted run used 'score'", columns=Columns(score="rel"))
    refused(r"--long-documents is 'chunk', the interrupted run used 'truncate'", long_documents="chunk")
    refused(r"--threads is 2, the interrupted run used 1", encoder=CrossEncoder(encoder.model_dir, provider="cpu",
                                                                               threads=2))
    refused(r"the model changed: .*roberta", encoder=CrossEncoder(tiny_exports["roberta"], provider="cpu", threads=1))
    refused(r"the model changed: .*; the model's number of labels is 2, the interrupted run used 1",
            encoder=CrossEncoder(two_label_dir, provider="cpu", threads=1))

    edited = tmp_path / "pairs.jsonl"
    edited.write_bytes(src.read_bytes().replace(b'"id": 3,', b'"id": 4,', 1))
    refused(r"the input changed: .* has same size, other content \(the interrupted run read .*killed", source=edited)
    longer = tmp_path / "longer.jsonl"
    longer.write_bytes(src.read_bytes() + b'{"id": 200, "query": "q", "passage": "p"}\n')
    refused(r"the input changed: .* has [\d,]+ bytes, was [\d,]+", source=longer)
    with pytest.raises(ScaleError, match=r"the input changed.*; --chunk-rows is 16"):  # every change is named
        score_file(encoder, longer, out, **{**kwargs, "chunk_rows": 16})

    with pytest.raises(ScaleError, match=r"an interrupted run left [\d,]+ scored rows in .*pass --resume"):
        score_file(encoder, src, out, **{**kwargs, "resume": False})

    # a torn last record (killed mid-write) is dropped; the Python API resumes what the command line started
    journal = state_folder(out) / JOURNAL
    with open(journal, "ab") as handle:
        handle.write(b"CHNK\x08\x00\x00\x00" + b"\x00" * 11)
    result = score_file(encoder, src, out, **kwargs)
    assert result.resumed_rows >= 5 * CHUNK and result.rows == 200
    assert out.read_bytes() == want and not state_folder(out).exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path, encoder, rows):
    src = write_rows(tmp_path / "pairs.csv", "csv", rows[:20])
    out = tmp_path / "out.csv"
    state_folder(out).mkdir()
    with open(state_folder(out) / JOURNAL, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ScaleError, match=r"another score-file run is writing .*out\.csv"):
            score_file(encoder, src, out, progress=False, resume=True)
    assert score_file(encoder, src, out, progress=False).rows == 20  # an empty journal: nothing to keep
    assert not state_folder(out).exists() and sorted(os.listdir(tmp_path)) == ["out.csv", "pairs.csv"]


def test_an_interrupted_python_call_resumes_with_its_capped_count(tmp_path, encoder, rows):
    """score_file() stopped by Ctrl-C (SIGINT to this process after 3 chunks) resumes to the same bytes, and the
    capped passages of the chunks scored before the interruption are still counted."""
    flag = LongDocuments("chunk", max_document_tokens=16, on_capped="flag")
    kwargs = {"chunk_rows": CHUNK, "batch_size": 2, "progress": False, "long_documents": flag}
    src = write_rows(tmp_path / "pairs.parquet", "parquet", rows)
    want = score_file(encoder, src, tmp_path / "want.parquet", **kwargs)
    out = tmp_path / "out.parquet"
    stop = threading.Event()

    def interrupt() -> None:
        while not stop.is_set():
            if chunks_done(out) >= 3:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.002)

    thread = threading.Thread(target=interrupt, daemon=True)
    # Ctrl-C's KeyboardInterrupt even where this suite was started with SIGINT ignored (a shell's background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            score_file(encoder, src, out, **kwargs)
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert not out.exists() and chunks_done(out) >= 3
    result = score_file(encoder, src, out, resume=True, **kwargs)
    assert result.resumed_rows >= 3 * CHUNK and result.rows == ROWS
    assert out.read_bytes() == want.out.read_bytes()
    assert result.details["capped_rows"] == want.details["capped_rows"] > 0
