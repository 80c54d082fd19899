"""The throughput benchmark behind benchmarks/results/throughput.{json,md,png}.

    bash benchmarks/setup_peers.sh          # once: the ONNX peers (sentence-transformers 5 onnx, fastembed)
    bash benchmarks/setup_peers_openvino.sh # once: the OpenVINO peers (sentence-transformers 6, optimum-intel)
    python benchmarks/throughput.py         # everything: about an hour on 2 cores; --quick for a smoke run

The quality levels' figures (the real MiniLM only, query-passage pairs, batch 32, 2 threads; under 25 minutes on
2 cores, most of it the export and sentence-transformers' OpenVINO export and calibration, done once under --work):

    python benchmarks/throughput.py --levels

which is short for

    python benchmarks/throughput.py --models stsb-minilm-l6 --workloads query-passage --pairs 512 \\
        --engines st-torch-fp32,st-torch-bf16,st-openvino,st-openvino-qint8,crossonnx-fp32,crossonnx-int8,\\
crossonnx-openvino-fp32,crossonnx-openvino-bf16,crossonnx-openvino-int8-static,crossonnx-openvino-int8-dynamic \\
        --reps 2 --rounds 3 --no-latency --stem throughput-levels

and writes benchmarks/results/throughput-levels.{json,md,png}, with the quality levels' table (benchmarks/lab/
targets.py: the faithful and fast tiers against st-openvino, torch bf16 and st-openvino-qint8; OpenVINO fp32 within
1e-5), the precision each engine executed (OpenVINO's read back from the compiled model), and cold start and peak
RSS of the OpenVINO engines.

Models: the project's real MiniLM-L6 STSb cross-encoder, and random-weight checkpoints of the exact shapes of
ms-marco-TinyBERT-L-2, ms-marco-TinyBERT-L-6, ms-marco-electra-base and stsb-roberta-base. Engines: see
crossonnx/bench/worker.py; a crossonnx variant the export folder lacks (e.g. bf16 where OpenVINO is not installed)
is reported as not run. Export folders under --work are reused: delete one to re-export it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from crossonnx.bench.report import throughput_markdown, throughput_plot
from crossonnx.bench.throughput import (
    ALL_ENGINES,
    OPENVINO_PEER_ENGINES,
    BenchConfig,
    BenchModel,
    add_torch_ratios,
    cold_start,
    make_peer_dir,
    run_latency,
    run_matrix,
)
from crossonnx.bench.worker import check_engine, crossonnx_variant
from crossonnx.checkpoints.stsb_minilm import build_reference_model
from crossonnx.checkpoints.synthetic import build_seed_shape
from crossonnx.exporter.pipeline import export_model
from crossonnx.manifest import load_manifest
from crossonnx.runtime_args import positive_int
from lab.machine import environment
from lab.peers import prepare_st_openvino, prepare_st_qint8
from lab.targets import markdown_sections

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["ms-marco-TinyBERT-L-2", "ms-marco-TinyBERT-L-6", "ms-marco-electra-base", "stsb-roberta-base"]
# pairs per workload, scaled to each model's cost so that a timed pass takes seconds, not minutes
SIZES = {
    "stsb-minilm-l6": {"query-passage": 256, "sentence-pairs": 512, "rank-100": 100},
    "ms-marco-TinyBERT-L-2": {"query-passage": 1024, "sentence-pairs": 1379, "rank-100": 100},
    "ms-marco-TinyBERT-L-6": {"query-passage": 128, "sentence-pairs": 384},
    "ms-marco-electra-base": {"query-passage": 64, "sentence-pairs": 192},
    "stsb-roberta-base": {"query-passage": 64, "sentence-pairs": 192},
}
# PyTorch bf16 is timed on the two models the bf16 target names (one timed pass each: time budget). On CPUs
# without AVX512-BF16/AMX it runs several times slower than fp32 (no bf16 kernels), so a wider matrix costs hours.
BF16_MODELS = {"stsb-minilm-l6", "ms-marco-TinyBERT-L-6"}
LEVELS_ENGINES = ("st-torch-fp32", "st-torch-bf16", "st-openvino", "st-openvino-qint8", "crossonnx-fp32",
                  "crossonnx-int8", "crossonnx-openvino-fp32", "crossonnx-openvino-bf16",
                  "crossonnx-openvino-int8-static", "crossonnx-openvino-int8-dynamic")
LEVELS = {"models": "stsb-minilm-l6", "workloads": "query-passage", "pairs": 512, "engines": ",".join(LEVELS_ENGINES),
          "no_latency": True, "stem": "throughput-levels", "reps": 2, "rounds": 3}
# batch-1 latency and cold start (whole process) on the first two models
LATENCY_ENGINES = ("st-torch-fp32", "st-torch-bf16", "crossonnx-fp32", "crossonnx-int8", "crossonnx-openvino-fp32",
                   "crossonnx-openvino-bf16")
COLD_START_ENGINES = ("st-torch-fp32", "st-openvino", "crossonnx-fp32", "crossonnx-int8", "crossonnx-openvino-fp32",
                      "crossonnx-openvino-bf16", "crossonnx-openvino-int8-static", "crossonnx-openvino-int8-dynamic")
ONNX_PEERS = ("sentence-transformers", "transformers", "optimum-onnx", "onnxruntime", "fastembed", "torch")
OPENVINO_PEERS = ("sentence-transformers", "transformers", "optimum-intel", "optimum", "openvino", "nncf", "torch")


def prepare(names: list[str], work: Path, peers_python: str | None, peers_openvino_python: str | None,
            engines: list[str]) -> list[BenchModel]:
    """Export each model once (and the peers' own exports the requested engines need); reused under ``work``."""
    models = []
    for name in names:
        out = work / "onnx" / name
        if name == "stsb-minilm-l6":
            checkpoint, real = build_reference_model(), True
            gates: list[str] = []
        else:
            checkpoint, real = work / "ckpt" / name, False
            if not (checkpoint / "config.json").is_file():
                build_seed_shape(name, checkpoint)
            gates = ["fp16:spearman=off", "int8:max_abs=0.05,spearman=off"]  # random weights: export/PARITY.md
        if not (out / "crossonnx.json").is_file():
            export_model(str(checkpoint), out=out, gate_overrides=gates)
        wanted = {variant[1] for e in engines if (variant := crossonnx_variant(e))}
        if missing := sorted(wanted - set(load_manifest(out).precisions)):
            print(f"note: {out} has no {', '.join(missing)} (reported as not run); delete it to re-export")
        model = BenchModel(name=name, checkpoint=checkpoint, export_dir=out, real_weights=real)
        model.peer_dir = make_peer_dir(model, work / "peer" / name)
        if peers_python and "st-onnx-qint8" in engines:
            model.st_int8_dir = prepare_st_qint8(model, work / "st-int8" / name, peers_python)
        if peers_openvino_python and any(e in OPENVINO_PEER_ENGINES for e in engines):
            model.st_openvino_dir = prepare_st_openvino(model, work / "st-openvino" / name, peers_openvino_python)
        models.append(model)
    return models


def peers_versions(python: str | None, names: tuple[str, ...]) -> dict[str, str]:
    if not python:
        return {}
    script = ("import json, sys, importlib.metadata as m\n"
              "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return '-'\n"
              "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    done = subprocess.run([python, "-c", script, *names], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _existing(path: str) -> str | None:
    return path if Path(path).is_file() else None


def render(result: Path) -> None:
    """Recompute a result's speed ratios from its rates and write its .json, .md and .png again."""
    doc = json.loads(result.read_text(encoding="utf-8"))
    add_torch_ratios(doc["throughput"]["results"])
    command = doc.get("command", "python benchmarks/throughput.py")
    write_report(doc, result.parent, result.stem, command)


def write_report(doc: dict, out: Path, stem: str, command: str) -> None:
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    markdown = throughput_markdown(doc, "Throughput", command, sections=markdown_sections)
    (out / f"{stem}.md").write_text(markdown, encoding="utf-8")
    throughput_plot(doc, out / f"{stem}.png")
    print(f"wrote {out}/{stem}.{{json,md,png}}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", action="store_true",
                        help="the quality levels' figures: the options shown above (explicit options still override)")
    parser.add_argument("--models", help="comma-separated (default: stsb-minilm-l6 and the four seed shapes)")
    parser.add_argument("--engines", help="comma-separated (default: all; see crossonnx/bench/worker.py)")
    parser.add_argument("--workloads", help="comma-separated (default: query-passage,sentence-pairs,rank-100)")
    parser.add_argument("--pairs", type=positive_int, help="pairs per workload (default: scaled to each model's cost)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--reps", type=positive_int, help="timed passes per engine process (default 3)")
    parser.add_argument("--rounds", type=positive_int,
                        help="processes per engine, engines taking turns; the median round counts, the lower "
                             "middle one for an even count (default 1)")
    parser.add_argument("--no-latency", action="store_true", default=None, help="skip the batch-1 latency runs")
    parser.add_argument("--peers-python", default=str(ROOT / ".cache/peers-venv/bin/python"),
                        help="benchmarks/setup_peers.sh's Python (st-onnx, st-onnx-qint8, fastembed)")
    parser.add_argument("--peers-openvino-python", default=str(ROOT / ".cache/peers-openvino-venv/bin/python"),
                        help="benchmarks/setup_peers_openvino.sh's Python (st-openvino, st-openvino-qint8)")
    parser.add_argument("--work", default=str(ROOT / ".cache/bench"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--stem", help="output file names (default: throughput, or throughput-quick)")
    parser.add_argument("--quick", action="store_true", help="2 reps, small inputs, no latency/cold start")
    parser.add_argument("--render", metavar="JSON",
                        help="measure nothing: rewrite a result JSON's ratios, markdown and plot with this code")
    args = parser.parse_args()
    if args.render:
        render(Path(args.render))
        return
    defaults = {"models": ",".join(["stsb-minilm-l6", *SHAPES]), "engines": ",".join(ALL_ENGINES),
                "workloads": "query-passage,sentence-pairs,rank-100", "no_latency": False, "reps": 3, "rounds": 1,
                "stem": "throughput-quick" if args.quick else "throughput"}
    for key, value in {**defaults, **(LEVELS if args.levels else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    peers, peers_openvino = _existing(args.peers_python), _existing(args.peers_openvino_python)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    engines = args.engines.split(",")
    for engine in engines:
        try:
            check_engine(engine)
        except ValueError as exc:
            parser.error(str(exc))
    models = prepare(names, work, peers, peers_openvino, engines)
    doc = {"environment": environment(), "peers_versions": peers_versions(peers, ONNX_PEERS),
           "peers_openvino_versions": peers_versions(peers_openvino, OPENVINO_PEERS), "throughput": {"results": []}}
    config = BenchConfig(threads=args.threads, reps=2 if args.quick else args.reps, rounds=args.rounds,
                         peers_python=peers,
                         peers_openvino_python=peers_openvino, min_seconds=0.5 if args.quick else 1.0,
                         reps_for={"st-torch-bf16": 1})
    doc["config"] = {"threads": config.threads, "reps": config.reps, "rounds": config.rounds,
                     "batch_size": config.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            sizes = SIZES[model.name]
            if args.pairs:
                sizes = {k: args.pairs for k in sizes}
            config.pairs = {k: max(16, v // 4) if args.quick else v for k, v in sizes.items()}
            workloads = [w for w in args.workloads.split(",") if w in sizes]
            model_engines = [e for e in engines if e != "st-torch-bf16" or model.name in BF16_MODELS]
            part = run_matrix([model], model_engines, workloads, config, Path(tmp))
            doc["throughput"]["results"] += part["results"]
        if not args.quick:
            if not args.no_latency:
                latency = [e for e in LATENCY_ENGINES if e in engines]
                doc["latency"] = run_latency(models[:2], latency, config, Path(tmp))
            doc["cold_start"] = [
                {**cold_start(engine, model, config, runs=3 if args.levels else 5), "model": model.name}
                for model in models[:2] for engine in COLD_START_ENGINES if engine in engines
            ]
    doc["command"] = " ".join(["python benchmarks/throughput.py", *sys.argv[1:]])
    write_report(doc, out, args.stem, doc["command"])


if __name__ == "__main__":
    main()
