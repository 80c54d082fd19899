"""`crossonnx score-file`: Parquet, JSON lines and CSV in and out, scores equal to predict, clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossonnx import CrossEncoder
from crossonnx.cli import main
from crossonnx.scale import ScaleError
from crossonnx.scale.files import Columns, score_file
from pairs import parity_pairs, write_rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FORMATS = ("parquet", "jsonl", "csv")
GOOD = '{"query": "a", "passage": "b"}\n'
CHUNK = 37  # small, so that every file spans several chunks and a last partial one


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Query-passage rows with odd text (tabs, newlines, quotes, commas, non-ASCII) and an extra column."""
    pairs = [*parity_pairs(48, seed=3), ('say "hi", ok', "a,b,c\r\nd"), ("", ""), ("\u2028", "'\"")]
    pairs = (pairs * 5)[:230]
    return [{"id": i, "query": q, "passage": p, "lang": "xx" if i % 3 else "en"} for i, (q, p) in enumerate(pairs)]


def read_rows(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 is text in JSON
        return [json.loads(line) for line in lines if line]
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_scores_every_row_like_predict_in_order(tmp_path, model_dir, encoder, rows, fmt, capsys):
    src = write_rows(tmp_path / f"pairs.{fmt}", fmt, rows)
    out = tmp_path / f"scored.{fmt}"
    code = main(["score-file", str(model_dir), str(src), "--out", str(out), "--chunk-rows", str(CHUNK),
                 "--threads", "1", "--batch-size", "8"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    got = read_rows(out, fmt)
    assert len(got) == len(rows)
    assert list(got[0]) == ["id", "query", "passage", "lang", "score"]  # input columns kept, score appended
    for before, after in zip(rows, got, strict=True):
        assert {k: str(v) if fmt == "csv" else v for k, v in before.items()} == {
            k: v for k, v in after.items() if k != "score"
        }
    expected = encoder.predict([(r["query"], r["passage"]) for r in rows])
    scores = np.asarray([float(r["score"]) for r in got], dtype=np.float32)
    # chunks pad their batches differently from one predict() over all rows: fp32 rounding only
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert leftovers(tmp_path) == []
    if fmt == "parquet":
        schema = pq.read_schema(out)
        assert schema.field("score").type == pa.float32()
        assert pq.ParquetFile(out).metadata.num_row_groups == -(-len(rows) // CHUNK)


def test_chunks_aligned_with_predict_give_identical_scores(tmp_path, encoder, rows):
    """Chunks of a multiple of predict's own tokenization chunk (2048) batch rows exactly as predict does."""
    many = (rows * 20)[:4100]
    src = write_rows(tmp_path / "many.jsonl", "jsonl", many)
    result = score_file(encoder, src, tmp_path / "out.jsonl", chunk_rows=2048, progress=False)
    assert result.rows == len(many)
    scores = np.asarray([r["score"] for r in read_rows(result.out, "jsonl")], dtype=np.float32)
    assert np.array_equal(scores, encoder.predict([(r["query"], r["passage"]) for r in many]))


def test_raw_scores_and_custom_columns(tmp_path, model_dir, encoder, rows):
    renamed = [{"q": r["query"], "p": r["passage"]} for r in rows[:60]]
    src = write_rows(tmp_path / "in.parquet", "parquet", renamed)
    out = tmp_path / "out.parquet"
    code = main(["score-file", str(model_dir), str(src), "-o", str(out), "--query-column", "q",
                 "--passage-column", "p", "--score-column", "logit", "--raw-scores", "--threads", "1"])
    assert code == 0
    table = pq.read_table(out)
    assert table.column_names == ["q", "p", "logit"]
    expected = encoder.predict([(r["q"], r["p"]) for r in renamed], activation_fn="identity")
    np.testing.assert_allclose(table.column("logit").to_numpy(), expected, rtol=0, atol=1e-6)


def test_default_output_name_and_progress_bar(tmp_path, encoder, rows, capsys):
    src = write_rows(tmp_path / "pairs.csv", "csv", rows)
    result = score_file(encoder, src, chunk_rows=CHUNK, progress=True)
    assert result.out == tmp_path / "pairs.scored.csv" and result.rows == len(rows)
    err = capsys.readouterr().err
    assert f"{len(rows):,} rows" in err and "100%" in err and err.endswith("\n")


def test_empty_input_writes_an_empty_output(tmp_path, encoder):
    for fmt in FORMATS:
        src = tmp_path / f"empty.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.table({"query": pa.array([], pa.string()), "passage": pa.array([], pa.string())}), src)
        else:
            src.write_text("query,passage\n" if fmt == "csv" else "", encoding="utf-8")
        result = score_file(encoder, src, progress=False)
        assert result.rows == 0 and read_rows(result.out, fmt) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_column_names_it_and_the_columns_present(tmp_path, encoder, fmt):
    src = write_rows(tmp_path / f"bad.{fmt}", fmt, [{"question": "a", "passage": "b"}])
    with pytest.raises(ScaleError, match=r"no column 'query'.*'question', 'passage'.*--query-column"):
        score_file(encoder, src, progress=False)
    assert not (tmp_path / f"bad.scored.{fmt}").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("jsonl", GOOD * 40 + '{"query": "a", "passage": 7}\n', r"row 41 \(line 41\): column 'passage' is int"),
        ("jsonl", GOOD + '\n{"query": null, "passage": "b"}\n', r"row 2 \(line 3\): column 'query' is null"),
        ("jsonl", GOOD + '["a", "b"]\n', r"line 2 is a JSON list"),
        ("jsonl", GOOD + '{"query": "a"\n', r"line 2 is not valid JSON"),
        ("csv", "query,passage\n" + "a,b\n" * 45 + "lonely\n", r"row 46 \(line 47\): column 'passage' is null"),
        ("csv", "query,passage\na,b,c\n", r"row 1 \(line 2\) has 3 fields, the header has 2"),
    ],
)
def test_bad_cells_name_the_row(tmp_path, encoder, fmt, content, message):
    src = tmp_path / f"bad.{fmt}"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(ScaleError, match=message):
        score_file(encoder, src, chunk_rows=8, progress=False)  # the error comes after chunks were written
    assert not (tmp_path / f"bad.scored.{fmt}").exists() and leftovers(tmp_path) == []


def test_parquet_nulls_and_non_text_columns(tmp_path, encoder):
    src = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"query": ["a"] * 30 + [None], "passage": ["b"] * 31}), src)
    with pytest.raises(ScaleError, match=r"row 31: column 'query' is null"):
        score_file(encoder, src, chunk_rows=8, progress=False)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"query": ["a"], "passage": [3]}), numbers)
    with pytest.raises(ScaleError, match=r"column 'passage' holds int64, not strings"):
        score_file(encoder, numbers, progress=False)
    assert leftovers(tmp_path) == []


def test_existing_output_needs_overwrite_and_survives_a_failed_run(tmp_path, encoder, rows):
    src = write_rows(tmp_path / "pairs.jsonl", "jsonl", rows[:10])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    with pytest.raises(ScaleError, match="already exists; pass --overwrite"):
        score_file(encoder, src, out, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "passage": "b"}\n' * 20 + '{"query": 1, "passage": "b"}\n', encoding="utf-8")
    with pytest.raises(ScaleError, match="row 21"):
        score_file(encoder, bad, out, overwrite=True, chunk_rows=4, progress=False)
    assert out.read_text(encoding="utf-8") == "precious\n" and leftovers(tmp_path) == []
    assert score_file(encoder, src, out, overwrite=True, progress=False).rows == 10
    with pytest.raises(ScaleError, match="already has a column 'score'"):
        score_file(encoder, out, tmp_path / "again.jsonl", progress=False)


def test_argument_errors(tmp_path, encoder, rows):
    src = write_rows(tmp_path / "pairs.jsonl", "jsonl", rows[:3])
    with pytest.raises(ScaleError, match="writes the input's format"):
        score_file(encoder, src, tmp_path / "out.parquet", progress=False)
    with pytest.raises(ScaleError, match="cannot tell the format"):
        score_file(encoder, tmp_path / "pairs.txt", progress=False)
    with pytest.raises(ScaleError, match="does not exist"):
        score_file(encoder, tmp_path / "missing.csv", progress=False)
    with pytest.raises(ScaleError, match="would overwrite a text column"):
        score_file(encoder, src, columns=Columns(score="query"), progress=False)
    renamed = tmp_path / "pairs.data"
    src.rename(renamed)
    assert score_file(encoder, renamed, tmp_path / "o.data", fmt="jsonl", progress=False).rows == 3


BLOCK_SCALE_IMPORTS = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pyarrow", "ray", "pandas"}:
            raise ImportError(name + " is blocked")
        return None
sys.meta_path.insert(0, _Blocked())
from crossonnx.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pyarrow", "ray", "pandas"})
print("heavy:", heavy)
sys.exit(code)
"""


def test_without_the_scale_extra(tmp_path, model_dir, rows):
    """JSONL and CSV need nothing beyond the runtime; Parquet names the extra to install; exit code 2."""
    jsonl = write_rows(tmp_path / "pairs.jsonl", "jsonl", rows[:5])
    parquet = write_rows(tmp_path / "pairs.parquet", "parquet", rows[:5])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BLOCK_SCALE_IMPORTS, "score-file", str(model_dir), *args],
                              capture_output=True, text=True, timeout=120, check=False)

    done = run(str(jsonl), "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout and "scored 5 rows" in done.stderr
    done = run(str(parquet), "--threads", "1")
    assert done.returncode == 2
    assert 'crossonnx: error: reading Parquet needs pyarrow' in done.stderr
    assert 'pip install "crossonnx[scale]"' in done.stderr
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def three_label_dir(work_dir) -> Path:
    from crossonnx.checkpoints.synthetic import build_tiny
    from crossonnx.exporter.pipeline import export_model

    checkpoint = build_tiny("bert", work_dir / "ckpt" / "bert-3-labels", seed=2, num_labels=3)
    return export_model(str(checkpoint), out=work_dir / "onnx" / "bert-3-labels", precisions="fp32", log=None)


@pytest.mark.parametrize("fmt", FORMATS)
def test_multi_label_models_write_one_list_per_row(tmp_path, three_label_dir, rows, fmt):
    encoder = CrossEncoder(three_label_dir, threads=1)
    src = write_rows(tmp_path / f"pairs.{fmt}", fmt, rows[:40])
    result = score_file(encoder, src, chunk_rows=16, progress=False)
    got = [r["score"] for r in read_rows(result.out, fmt)]
    if fmt == "csv":
        got = [json.loads(value) for value in got]  # a JSON list per cell
    if fmt == "parquet":
        assert pq.read_schema(result.out).field("score").type == pa.list_(pa.float32(), 3)
    expected = encoder.predict([(r["query"], r["passage"]) for r in rows[:40]])
    assert expected.shape == (40, 3)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=0, atol=1e-6)


def test_a_passage_longer_than_the_chunk_cap_names_its_row(tmp_path, encoder):
    from crossonnx import LongDocuments

    rows = [{"query": "q", "passage": "short"}] * 29 + [{"query": "q", "passage": "word " * 80}]
    src = write_rows(tmp_path / "long.jsonl", "jsonl", rows)
    capped = LongDocuments("chunk", max_document_tokens=16)
    with pytest.raises(ScaleError, match=r"long.jsonl: .* row 30 \(\d+ of its \d+ tokens\).*Raise it to \d+"):
        score_file(encoder, src, chunk_rows=8, progress=False, long_documents=capped)
    assert leftovers(tmp_path) == []
    flagged = LongDocuments("chunk", max_document_tokens=16, on_capped="flag")
    result = score_file(encoder, src, chunk_rows=8, progress=False, long_documents=flagged)
    assert result.rows == 30 and result.details["capped_rows"] == 1


def test_capped_rows_are_counted_once_for_the_job_not_warned_per_chunk(tmp_path, encoder, caplog):
    from crossonnx import LongDocuments

    # a capped passage in each of four chunks
    rows = [{"query": "q", "passage": "word " * 80 if i % 8 == 0 else "short"} for i in range(32)]
    src = write_rows(tmp_path / "long.jsonl", "jsonl", rows)
    flagged = LongDocuments("chunk", max_document_tokens=16, on_capped="flag")
    with caplog.at_level("WARNING", logger="crossonnx"):
        result = score_file(encoder, src, chunk_rows=8, progress=False, long_documents=flagged)
    assert result.details["capped_rows"] == 4
    assert not [r for r in caplog.records if "max_document_tokens" in r.getMessage()]
    # predict itself still warns (a caller who scores one list is told)
    with caplog.at_level("WARNING", logger="crossonnx"):
        encoder.predict([(r["query"], r["passage"]) for r in rows], long_documents=flagged)
    assert len([r for r in caplog.records if "max_document_tokens" in r.getMessage()]) == 1
