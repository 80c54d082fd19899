"""The peers' own exports, made once before a benchmark times them: sentence-transformers' dynamic int8 ONNX file
(``st-onnx-qint8``) and its OpenVINO IR and static int8 IR (``st-openvino``, ``st-openvino-qint8``), each in the
peers' own environment (benchmarks/setup_peers.sh, benchmarks/setup_peers_openvino.sh).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from crossonnx.bench.throughput import BenchModel
from crossonnx.bench.worker import ST_OPENVINO_FILE, ST_OPENVINO_QINT8_FILE


def prepare_st_qint8(model: BenchModel, out: Path, peers_python: str) -> Path:
    """sentence-transformers' own int8 path, as its docs show it: export with optimum, then
    export_dynamic_quantized_onnx_model(model, "avx2"). (Its quantizer cannot take our fused graph.)"""
    if list(out.glob("onnx/model_*int8_avx2.onnx")):
        return out
    script = (
        "import sys; from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model\n"
        "m = CrossEncoder(sys.argv[1], backend='onnx', local_files_only=True)\n"
        "m.save_pretrained(sys.argv[2])\n"
        "export_dynamic_quantized_onnx_model(m, 'avx2', sys.argv[2])\n"
    )
    done = subprocess.run([peers_python, "-c", script, str(model.checkpoint), str(out)], capture_output=True,
                          text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not list(out.glob("onnx/model_*int8_avx2.onnx")):
        raise RuntimeError(f"sentence-transformers int8 export failed: {done.stderr.strip()[-500:]}")
    return out


ST_OPENVINO_FILES = (ST_OPENVINO_FILE, ST_OPENVINO_QINT8_FILE)


def prepare_st_openvino(model: BenchModel, out: Path, peers_openvino_python: str) -> Path:
    """sentence-transformers' own OpenVINO path, exported once here so that no timed run exports:

    - ``CrossEncoder(checkpoint, backend="openvino")`` exports the checkpoint to OpenVINO IR through optimum-intel
      into a temporary folder on every load (nothing is cached); ``save_pretrained`` keeps it, as
      ``openvino/openvino_model.xml`` beside the checkpoint's files, which later loads read without exporting.
    - ``export_static_quantized_openvino_model`` with its defaults writes
      ``openvino/openvino_model_qint8_quantized.xml``: single sentences, each padded to 384 tokens, and
      ``OVQuantizationConfig()``. Read from the code of sentence-transformers 6.2 / optimum-intel 2.2 (its docs
      say 300 samples): that config has ``num_samples=None``, so the whole calibration set is tokenized and NNCF
      calibrates on ``subset_size = num_samples or 128`` = 128 of them (SmoothQuant and fast bias correction, as
      ``model_type="transformer"`` sets them). Its default set, the Hub's glue/sst2 sentences, is not reachable
      offline, so STSb train sentences stand in, as a local dataset folder (``calibration_dataset``) passed the way
      the function takes one (dataset name, config, split and column).
    """
    if all((out / name).is_file() for name in ST_OPENVINO_FILES):
        return out
    calibration = calibration_dataset(out.parent / f"{out.name}-calibration")
    script = (
        "import sys\n"
        "from optimum.intel import OVQuantizationConfig\n"
        "from sentence_transformers import CrossEncoder, export_static_quantized_openvino_model\n"
        "m = CrossEncoder(sys.argv[1], backend='openvino', local_files_only=True)\n"
        "m.save_pretrained(sys.argv[2])\n"
        "export_static_quantized_openvino_model(m, OVQuantizationConfig(), sys.argv[2], dataset_name=sys.argv[3],\n"
        "    dataset_config_name=CONFIG, dataset_split='train', column_name='sentence')\n"
    ).replace("CONFIG", repr(CALIBRATION_CONFIG))
    done = subprocess.run([peers_openvino_python, "-c", script, str(model.checkpoint), str(out), str(calibration)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    if done.returncode != 0 or not all((out / name).is_file() for name in ST_OPENVINO_FILES):
        raise RuntimeError(f"sentence-transformers OpenVINO export failed: {done.stderr.strip()[-800:]}")
    return out


CALIBRATION_CONFIG = "stsb-train-sentences"


def calibration_dataset(folder: Path, sentences: int = 1000, seed: int = 0) -> Path:
    """A local Hugging Face dataset folder (train.csv, column ``sentence``; config named in README.md) of STSb
    train sentences: what export_static_quantized_openvino_model draws its calibration sentences from in place of
    glue/sst2."""
    import csv
    import random

    from crossonnx.stsb import load_stsb

    folder.mkdir(parents=True, exist_ok=True)
    rows = load_stsb("train")
    pool = sorted({s for r in rows for s in (r.sentence1, r.sentence2)})
    picked = random.Random(seed).sample(pool, min(sentences, len(pool)))
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence"])
        writer.writerows([s] for s in picked)
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {CALIBRATION_CONFIG}\n  data_files:\n  - split: train\n"
        "    path: train.csv\n---\nSTSb train sentences, for sentence-transformers' static int8 calibration.\n",
        encoding="utf-8",
    )
    return folder
