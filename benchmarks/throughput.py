"""The throughput benchmark behind benchmarks/results/throughput.{json,md,png}.

    bash benchmarks/setup_peers.sh          # once: the peers' environment (sentence-transformers onnx, fastembed)
    python benchmarks/throughput.py         # about an hour on 2 cores; --quick for a smoke run

Models: the project's real MiniLM-L6 STSb cross-encoder, and random-weight checkpoints of the exact shapes of
ms-marco-TinyBERT-L-2, ms-marco-TinyBERT-L-6, ms-marco-electra-base and stsb-roberta-base.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from crossonnx.bench.report import throughput_markdown, throughput_plot
from crossonnx.bench.throughput import (
    ALL_ENGINES,
    BenchConfig,
    BenchModel,
    cold_start,
    environment,
    make_peer_dir,
    prepare_st_qint8,
    run_latency,
    run_matrix,
)
from crossonnx.checkpoints.stsb_minilm import build_reference_model
from crossonnx.checkpoints.synthetic import build_seed_shape
from crossonnx.exporter.pipeline import export_model

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
# without AVX512-BF16/AMX it runs at about a fifth of fp32 speed (measured on an earlier AVX2-only machine).
BF16_MODELS = {"stsb-minilm-l6", "ms-marco-TinyBERT-L-6"}


def prepare(names: list[str], work: Path, peers_python: str | None) -> list[BenchModel]:
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
        model = BenchModel(name=name, checkpoint=checkpoint, export_dir=out, real_weights=real)
        model.peer_dir = make_peer_dir(model, work / "peer" / name)
        if peers_python:
            model.st_int8_dir = prepare_st_qint8(model, work / "st-int8" / name, peers_python)
        models.append(model)
    return models


def peers_versions(python: str | None) -> dict[str, str]:
    if not python:
        return {}
    script = ("import json, importlib.metadata as m; print(json.dumps({n: m.version(n) for n in "
              "['sentence-transformers','transformers','optimum-onnx','onnxruntime','fastembed','torch']}))")
    return json.loads(subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(["stsb-minilm-l6", *SHAPES]))
    parser.add_argument("--engines", default=",".join(ALL_ENGINES))
    parser.add_argument("--workloads", default="query-passage,sentence-pairs,rank-100")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peers-python", default=str(ROOT / ".cache/peers-venv/bin/python"))
    parser.add_argument("--work", default=str(ROOT / ".cache/bench"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="2 reps, small inputs, no latency/cold start")
    args = parser.parse_args()

    peers = args.peers_python if Path(args.peers_python).is_file() else None
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    models = prepare(names, work, peers)
    engines = args.engines.split(",")
    doc = {"environment": environment(), "peers_versions": peers_versions(peers), "throughput": {"results": []}}
    config = BenchConfig(threads=args.threads, reps=2 if args.quick else args.reps, peers_python=peers,
                         min_seconds=0.5 if args.quick else 1.0, reps_for={"st-torch-bf16": 1})
    doc["config"] = {"threads": config.threads, "reps": config.reps, "batch_size": config.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            sizes = SIZES[model.name]
            config.pairs = {k: max(16, v // 4) if args.quick else v for k, v in sizes.items()}
            workloads = [w for w in args.workloads.split(",") if w in sizes]
            model_engines = [e for e in engines if e != "st-torch-bf16" or model.name in BF16_MODELS]
            part = run_matrix([model], model_engines, workloads, config, Path(tmp))
            doc["throughput"]["results"] += part["results"]
        if not args.quick:
            runtime = ["st-torch-fp32", "crossonnx-fp32", "crossonnx-int8"]
            doc["latency"] = run_latency(models[:2], [*runtime, "st-torch-bf16"], config, Path(tmp))
            doc["cold_start"] = [
                {**cold_start(engine, model, config), "model": model.name}
                for model in models[:2] for engine in runtime
            ]
    suffix = "-quick" if args.quick else ""
    (out / f"throughput{suffix}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    command = "python benchmarks/throughput.py" + (" --quick" if args.quick else "")
    (out / f"throughput{suffix}.md").write_text(throughput_markdown(doc, "Throughput", command), encoding="utf-8")
    throughput_plot(doc, out / f"throughput{suffix}.png")
    print(f"wrote {out}/throughput{suffix}.{{json,md,png}}")


if __name__ == "__main__":
    main()
