"""Command-line registration for `crossonnx score-file` (argparse only; readers are imported when run)."""

from __future__ import annotations

import argparse
import sys

from crossonnx.runtime_args import add_long_document_args, add_runtime_args, long_document_options, runtime_kwargs

DESCRIPTION = """\
Score every (query, passage) row of a Parquet, JSON-lines or CSV file and write it back with a score column.
The file is streamed CHUNK_ROWS rows at a time, so memory does not grow with its length; the output keeps the
input's format, columns and row order, and is written to a partial file renamed into place only on success.
A killed or interrupted run keeps its scored chunks in a journal beside the output: run the same command with
--resume to continue from the last completed chunk (the output is byte for byte that of an uninterrupted run).
"""


def _cmd_score_file(args: argparse.Namespace) -> int:
    from crossonnx.scale.columns import Columns, ScoreOptions
    from crossonnx.scale.files import score_file

    scoring = ScoreOptions(**runtime_kwargs(args), batch_size=args.batch_size, raw_scores=args.raw_scores,
                           long_documents=long_document_options(args))
    options = scoring.long_documents
    encoder = scoring.encoder(args.model_dir)
    result = score_file(
        encoder,
        args.input,
        args.out,
        fmt=args.format,
        columns=Columns(args.query_column, args.passage_column, args.score_column),
        batch_size=scoring.batch_size,
        chunk_rows=args.chunk_rows,
        raw_scores=scoring.raw_scores,
        overwrite=args.overwrite,
        progress=args.progress,
        long_documents=options,
        resume=args.resume,
    )
    if args.resume:
        done = result.resumed_rows
        print(f"resumed after {done:,} rows" if done else "--resume: nothing to resume, scored from the first row",
              file=sys.stderr)
    capped = result.details["capped_rows"]
    note = f"; {capped:,} passages were longer than the cap (their first tokens were scored)" if capped else ""
    print(
        f"scored {result.rows:,} rows in {result.seconds:.2f} s ({result.pairs_per_second:,.0f} pairs/s, "
        f"{encoder.precision}, {encoder.threads} threads) -> {result.out}{note}",
        file=sys.stderr,
    )
    print(result.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `score-file` subcommand to the crossonnx parser."""
    from crossonnx.scale import DEFAULT_CHUNK_ROWS, FORMATS

    p = sub.add_parser(
        "score-file",
        help="score the (query, passage) rows of a Parquet, JSONL or CSV file, streaming",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_runtime_args(p)
    p.add_argument("input", help="a .parquet, .jsonl or .csv file (CSV: with a header row)")
    p.add_argument("-o", "--out", help="output file, same format as the input (default: INPUT.scored.EXT beside it)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="input format (default: extension)")
    p.add_argument("--query-column", default="query", help="the column holding the first text (default query)")
    p.add_argument("--passage-column", default="passage", help="the column holding the second text (default passage)")
    p.add_argument("--score-column", default="score", help="the column to add (default score)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per model call (default 32)")
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"rows read, scored and written at a time; bounds memory (default {DEFAULT_CHUNK_ROWS})",
    )
    p.add_argument("--raw-scores", action="store_true", help="write logits, without the model's activation")
    add_long_document_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (after every row is scored)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed or interrupted run from its last completed chunk (same input, model and options; "
        "starts from the first row when there is nothing to resume)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(run=_cmd_score_file)
