"""`crossonnx` command line. Heavy imports (torch, the exporter) live inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from crossonnx.engines.onnxruntime import DEFAULT_MAX_BATCH
from crossonnx.errors import CrossOnnxError
from crossonnx.manifest import PRECISIONS
from crossonnx.runtime_args import (
    add_long_document_args,
    add_runtime_args,
    long_document_options,
    positive_int,
    runtime_kwargs,
)
from crossonnx.scale.cli import register as register_score_file
from crossonnx.serve.cli import register as register_serve
from crossonnx.tune import DEFAULT_SECONDS, DEFAULT_WORKLOAD, WORKLOADS


def _cmd_list(args: argparse.Namespace) -> int:
    from crossonnx.registry import load_registry

    header = f"{'name':28s} {'hub id':44s} {'arch':8s} {'shape':13s} {'activation':9s} published metric"
    print(header)
    print("-" * len(header))
    for spec in load_registry().values():
        print(spec.summary())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from crossonnx.exporter import require_export_extra

    require_export_extra()
    from crossonnx.exporter.pipeline import export_model

    out = export_model(
        args.source,
        out=args.out,
        precisions=args.precision,
        max_length=args.max_length,
        opset=args.opset,
        revision=args.revision,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        gate_overrides=args.gate or (),
        overwrite=args.overwrite,
        tensorrt=args.tensorrt,
    )
    print(out)
    return 0


def _cmd_build_reference(args: argparse.Namespace) -> int:
    from crossonnx.exporter import require_export_extra

    require_export_extra()
    from crossonnx.checkpoints.stsb_minilm import build_reference_model

    print(build_reference_model(out=args.out, force=args.force))
    return 0


def _parse_pair_line(line: str, where: str) -> tuple[str, str]:
    if line.lstrip().startswith(("[", "{")):
        item = json.loads(line)
        pair = (item["query"], item["passage"]) if isinstance(item, dict) else tuple(item)
    else:
        pair = tuple(line.split("\t"))
    if len(pair) != 2:
        raise CrossOnnxError(f"{where}: expected two texts, got {len(pair)}")
    return pair  # type: ignore[return-value]


def _read_pairs(path: str) -> list[tuple[str, str]]:
    """JSON lines of [text_a, text_b] (or {"query","passage"}), or tab-separated lines; - for stdin."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    return [_parse_pair_line(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]


def _encoder(args: argparse.Namespace):
    from crossonnx.encoder import CrossEncoder

    return CrossEncoder(args.model_dir, **runtime_kwargs(args))


def _cmd_predict(args: argparse.Namespace) -> int:
    pairs = [tuple(p) for p in args.pair or []]
    if args.file:
        pairs += _read_pairs(args.file)
    if not pairs:
        raise CrossOnnxError("no pairs given: use --pair TEXT_A TEXT_B (repeatable) or --file FILE")
    options = long_document_options(args)
    encoder = _encoder(args)
    if options.mode == "truncate":
        scores = encoder.predict(pairs, batch_size=args.batch_size, long_documents=options)
        for pair, score in zip(pairs, scores.tolist(), strict=True):
            print(json.dumps({"pair": list(pair), "score": score}, ensure_ascii=False))
        return 0
    details = encoder.predict_details(pairs, batch_size=args.batch_size, long_documents=options)
    for index, (pair, score) in enumerate(zip(pairs, details.scores.tolist(), strict=True)):
        print(json.dumps({"pair": list(pair), "score": score, **details.row(index)}, ensure_ascii=False))
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    options = long_document_options(args)
    encoder = _encoder(args)
    results = encoder.rank(args.query, args.documents, top_k=args.top_k, return_documents=True,
                           return_spans=args.spans, long_documents=options)
    for item in results:
        span = f"{item['span'][0]}:{item['span'][1]}\t" if args.spans else ""
        print(f"{item['score']:.6f}\t{item['corpus_id']}\t{span}{item['text']}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from crossonnx.verify import verify_folder

    chosen = args.precision is None and args.provider is None  # all exported, each on its own engine
    results = verify_folder(args.model_dir, args.precision.split(",") if args.precision else None, args.provider,
                            skip_unavailable=chosen)
    ok = True
    width = max(map(len, results), default=0)
    for precision, r in results.items():
        if "skipped" in r:
            print(f"{precision:{width}s} skipped: {r['skipped']}")
            continue
        ok &= r["passed"]
        print(
            f"{precision:{width}s} {'ok  ' if r['passed'] else 'FAIL'} max abs diff {r['max_abs_diff']:.3g}  "
            f"Spearman {r['spearman']:.6f}  ({r['n']} pairs, {r['provider']})"
        )
    if chosen:
        from crossonnx.manifest import load_manifest

        for item in load_manifest(args.model_dir).left_out:  # what the export built but did not keep
            print(f"{item.precision:{width}s} not in the folder: {item.reason()}")
    return 0 if ok else 1


def _cmd_info(args: argparse.Namespace) -> int:
    from crossonnx.manifest import load_manifest

    manifest = load_manifest(args.model_dir)
    print(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from crossonnx.bench.accuracy import crossonnx_scorer, evaluate, torch_scorer
    from crossonnx.bench.worker import engine_name
    from crossonnx.engines import validation_provider
    from crossonnx.levels import Machine
    from crossonnx.manifest import load_manifest

    threads = args.threads or 2
    scorers = {}
    if args.checkpoint:
        scorers["torch-fp32"] = torch_scorer(Path(args.checkpoint), "fp32", threads)
    machine = Machine.probe()
    for precision in load_manifest(args.model_dir).precisions:  # OpenVINO's own precisions on OpenVINO
        provider = validation_provider(precision)
        cannot = machine.runs(provider, precision)
        if cannot is not None:  # e.g. bf16 on a CPU without bf16: what runs here is compared, the rest named
            print(f"{precision} skipped: {cannot}", file=sys.stderr)
            continue
        scorers[engine_name(provider, precision)] = crossonnx_scorer(Path(args.model_dir), precision, threads, provider)
    reference = "torch-fp32" if args.checkpoint else next(iter(scorers))
    rows = evaluate(scorers, reference=reference, queries=args.queries, log=lambda m: print(m, file=sys.stderr))
    print(f"agreement against {reference}; STSb test: 1379 pairs; rank: {args.queries} lists of 100 candidates")
    width = max((len(r["engine"]) for r in rows), default=6)
    print(f"{'engine':{width}s} {'STSb x100':>9s} {'max abs diff':>12s} {'Spearman':>9s} {'top-10':>7s}")
    for r in rows:
        print(f"{r['engine']:{width}s} {r['stsb_test_spearman_x100']:9.2f} {r['max_abs_diff_vs_fp32']:12.2e} "
              f"{r['spearman_vs_fp32']:9.5f} {r['top10_agreement']:7.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    if args.accuracy:
        return _cmd_bench_accuracy(args)
    from crossonnx.bench.report import throughput_markdown
    from crossonnx.bench.throughput import BenchConfig, BenchModel, environment, make_peer_dir, run_matrix
    from crossonnx.manifest import load_manifest

    load_manifest(args.model_dir)  # a missing or broken folder is an error here, not a report of failed engines

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    engines = args.engines.split(",") if args.engines else (
        ["st-torch-fp32", "crossonnx-fp32", "crossonnx-int8"] if checkpoint else ["crossonnx-fp32", "crossonnx-int8"]
    )
    model = BenchModel(name=Path(args.model_dir).name, checkpoint=checkpoint, export_dir=Path(args.model_dir))
    config = BenchConfig(threads=args.threads or 2, reps=args.reps, peers_python=args.peers_python,
                         pairs={w: args.pairs for w in ("query-passage", "sentence-pairs")})
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is not None:
            model.peer_dir = make_peer_dir(model, Path(tmp) / "peer")
        result = run_matrix([model], engines, args.workloads.split(","), config, Path(tmp), log=print)
    doc = {"environment": environment(), "throughput": result,
           "config": {"threads": config.threads, "reps": config.reps, "batch_size": config.batch_size}}
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(throughput_markdown(doc, "crossonnx bench", "crossonnx bench"))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _cmd_warmup(args: argparse.Namespace) -> int:
    from crossonnx.encoder import CrossEncoder

    encoder = CrossEncoder(
        args.model_dir, **runtime_kwargs(args), max_length=args.max_length, max_batch=args.max_batch,
        device_id=args.device_id,
    )
    seconds = encoder.warmup()
    print(json.dumps({**encoder.info(), "warmup_seconds": round(seconds, 3)}, indent=2, ensure_ascii=False))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from crossonnx import first_use
    from crossonnx.levels import Machine
    from crossonnx.manifest import load_manifest
    from crossonnx.tune import choices, table, tune

    manifest = load_manifest(args.model_dir)  # a bad folder fails before anything is measured
    result = tune(args.model_dir, seconds=args.seconds, threads=args.threads,
                  log=lambda message: print(message, file=sys.stderr))
    identity = result.identity
    print(f"{args.model_dir}: {len(result.variants)} variants measured in {result.seconds:.0f} s on {identity['cpu']}, "
          f"{result.threads} threads")
    print("pairs/s: query-passage pairs at the best token budget tried (budget); p50 ms: one pair per call; max abs "
          "diff, Spearman: agreement with PyTorch fp32 recorded at export; level: the most accurate it meets")
    for line in table(manifest, result, args.workload):
        print(line)
    print(f"choice for {args.workload} (* the fastest variant):")
    check = first_use.checker(Path(args.model_dir), result.threads)  # a pending variant counts once validated here
    for level, chosen in choices(manifest, result, args.workload, Machine.probe(), check).items():
        print(f"  {level:9s} {chosen}")
    print(f"stored: {result.path}")
    return 0


def _cmd_providers(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from crossonnx.engines import available_providers, openvino_installed, resolve_provider
    from crossonnx.engines.onnxruntime import gpu_name, tensorrt_loadable, tensorrt_version

    choice = resolve_provider("auto")
    openvino = None
    if openvino_installed():
        from importlib import metadata

        from crossonnx.engines.openvino import cpu_capabilities

        openvino = {"version": metadata.version("openvino"), "cpu_capabilities": cpu_capabilities()}
    report = {
        "onnxruntime": ort.__version__,
        "available": available_providers(),
        "auto": choice.provider,
        "reason": choice.reason,
        "tensorrt_libraries": tensorrt_loadable(),
        "tensorrt_version": tensorrt_version(),
        "gpu": gpu_name() if choice.provider in ("cuda", "tensorrt") else None,
        "openvino": openvino,
    }
    print(json.dumps(report, indent=2))
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossonnx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="the models crossonnx answers for (models.yaml)").set_defaults(run=_cmd_list)

    p = sub.add_parser("export", help="export a checkpoint to a validated ONNX model folder")
    p.add_argument("source", help="a models.yaml name, a Hugging Face Hub id, or a local checkpoint folder")
    p.add_argument("--out", help="output folder (default: models/<name>)")
    p.add_argument("--precision", default=None,
                   help=f"comma-separated, from {','.join(PRECISIONS)} (default: fp32,fp16,int8, and OpenVINO's "
                        "bf16,int8-static,int8-dynamic where OpenVINO and NNCF can build them)")
    p.add_argument("--max-length", type=int, default=None, help="truncate pairs to N tokens (default: the model's)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--allow-pickle", action="store_true", help="allow pytorch_model.bin (pickle) weights")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the checkpoint")
    p.add_argument(
        "--gate",
        action="append",
        metavar="PRECISION:max_abs=X,spearman=Y",
        help="override a validation threshold, e.g. int8:max_abs=0.05,spearman=0.99 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (after validation)")
    p.add_argument(
        "--tensorrt", action="store_true", help="also keep the unfused fp32 graph TensorRT builds its engines from"
    )
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser(
        "build-reference", help="build the reference cross-encoder (MiniLM-L6 fine-tuned on STSb; cached)"
    )
    p.add_argument("--out", help="folder (default: the crossonnx cache)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.set_defaults(run=_cmd_build_reference)

    p = sub.add_parser("predict", help="score text pairs")
    add_runtime_args(p)
    p.add_argument("--pair", nargs=2, action="append", metavar=("TEXT_A", "TEXT_B"), help="a pair (repeatable)")
    p.add_argument("--file", help="JSON lines [a, b] or tab-separated pairs; - for stdin")
    p.add_argument("--batch-size", type=int, default=32)
    add_long_document_args(p)
    p.set_defaults(run=_cmd_predict)

    p = sub.add_parser("rank", help="rank documents for a query")
    add_runtime_args(p)
    p.add_argument("query")
    p.add_argument("documents", nargs="+")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--spans", action="store_true",
                   help="print START:END, the characters of each document behind its score, before its text")
    add_long_document_args(p)
    p.set_defaults(run=_cmd_rank)

    p = sub.add_parser("verify", help="re-check a model folder against its stored PyTorch scores (no torch)")
    p.add_argument("model_dir")
    p.add_argument("--precision", default=None, help="comma-separated precisions (default: all exported)")
    p.add_argument("--provider", default=None,
                   help="engine to verify on (default: the one each precision was validated on at export)")
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser("bench", help="throughput of an exported model, optionally against PyTorch and peers")
    p.add_argument("model_dir")
    p.add_argument("--checkpoint", help="the PyTorch checkpoint, to compare with sentence-transformers")
    p.add_argument("--engines", help="comma-separated; see crossonnx/bench/worker.py (default: fp32, int8, torch)")
    p.add_argument("--workloads", default="query-passage", help="query-passage, sentence-pairs, rank-100")
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--peers-python", help="Python of an environment with sentence-transformers 5 + optimum")
    p.add_argument("--out", help="write JSON here (and markdown beside it)")
    p.add_argument("--accuracy", action="store_true",
                   help="STSb test Spearman and agreement per precision instead of speed (no torch without "
                        "--checkpoint: agreement is then against the folder's fp32)")
    p.add_argument("--queries", type=int, default=100, help="--accuracy: rank lists of 100 candidates")
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("warmup", help="load a model and run its shape range once (builds the TensorRT engine)")
    add_runtime_args(p)
    p.add_argument("--max-length", type=int, default=None, help="longest pair in tokens (default: the model's)")
    p.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                   help=f"most pairs per model call (TensorRT profile; default {DEFAULT_MAX_BATCH})")
    p.add_argument("--device-id", type=int, default=0)
    p.set_defaults(run=_cmd_warmup)

    p = sub.add_parser("tune", help="measure every variant of a model folder on this machine; levels and "
                                    "provider='auto' then pick the fastest")
    p.add_argument("model_dir")
    p.add_argument("--workload", default=DEFAULT_WORKLOAD, choices=WORKLOADS,
                   help="what the printed choice optimizes: pairs/s, or p50 of one-pair calls (both are stored; "
                        f"CrossEncoder's workload argument picks which one it follows; default {DEFAULT_WORKLOAD})")
    p.add_argument("--seconds", type=_positive_float, default=DEFAULT_SECONDS,
                   help=f"about how long to measure in all, loading included (default {DEFAULT_SECONDS:g})")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: all CPUs; a result is used by encoders with the same count)")
    p.set_defaults(run=_cmd_tune)

    p = sub.add_parser("providers", help="the execution providers here and what provider='auto' picks")
    p.set_defaults(run=_cmd_providers)

    p = sub.add_parser("info", help="print a model folder's manifest")
    p.add_argument("model_dir")
    p.set_defaults(run=_cmd_info)

    register_serve(sub)
    register_score_file(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CrossOnnxError as exc:
        print(f"crossonnx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
