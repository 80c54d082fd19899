"""The runtime never imports torch or transformers: proven in a process where importing them fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pairs import parity_pairs

BLOCK_HEAVY_IMPORTS = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "sentence_transformers", "optimum", "onnx"}:
            raise ImportError(name + " is blocked: the crossonnx runtime must not import it")
        return None
sys.meta_path.insert(0, _Blocked())
"""

SCORE_SCRIPT = BLOCK_HEAVY_IMPORTS + """
import json
import crossonnx.cli, crossonnx.verify, crossonnx.registry  # every runtime module imports cleanly
from crossonnx import CrossEncoder
model = CrossEncoder(sys.argv[1], precision=sys.argv[3])
pairs = [tuple(p) for p in json.load(open(sys.argv[2], encoding="utf-8"))]
scores = model.predict(pairs).tolist()
ranked = model.rank(pairs[0][0], [p[1] for p in pairs], top_k=3)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "sentence_transformers", "onnx"})
print(json.dumps({"scores": scores, "ranked": ranked, "heavy": heavy}))
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_predict_in_a_process_where_torch_cannot_be_imported(tmp_path, reference_checkpoint, reference_export,
                                                             st_model_factory):
    pairs = parity_pairs(40, seed=23)
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(json.dumps(pairs), encoding="utf-8")
    for precision in ("fp32", "int8"):
        done = _run(SCORE_SCRIPT, str(reference_export), str(pairs_file), precision)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["heavy"] == []
        if precision == "fp32":
            expected = st_model_factory(reference_checkpoint).predict(pairs)
            assert np.abs(np.asarray(result["scores"]) - expected).max() <= 1e-5


def test_blocker_really_blocks():
    done = _run(BLOCK_HEAVY_IMPORTS + "import torch")
    assert done.returncode != 0 and "is blocked" in done.stderr


def test_cli_verify_and_predict_without_torch(tiny_exports):
    folder = str(tiny_exports["bert"])
    verify = _run(BLOCK_HEAVY_IMPORTS + "from crossonnx.cli import main; sys.exit(main(sys.argv[1:]))",
                  "verify", folder)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    from crossonnx.manifest import load_manifest

    precisions = load_manifest(folder).precisions
    pending = [name for name, entry in precisions.items() if entry.pending]  # bf16 exported on a CPU without bf16
    assert verify.stdout.count(" ok ") == len(precisions) - len(pending)
    assert verify.stdout.count(" skipped: pending, ") == len(pending)
    predict = _run(BLOCK_HEAVY_IMPORTS + "from crossonnx.cli import main; sys.exit(main(sys.argv[1:]))",
                   "predict", folder, "--pair", "a query", "a passage", "--precision", "int8")
    assert predict.returncode == 0, predict.stderr
    line = json.loads(predict.stdout)
    assert line["pair"] == ["a query", "a passage"] and 0.0 <= line["score"] <= 1.0


def test_base_install_metadata_has_no_heavy_or_gpu_dependency():
    """The base requirements are the runtime's; torch & co. live in extras; the GPU wheel is never pulled."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = {req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
             for req in project["dependencies"]}
    assert names == {"numpy", "onnxruntime", "tokenizers", "pyyaml"}
    for extra, requirements in project["optional-dependencies"].items():
        assert not any(r.lower().startswith("onnxruntime-gpu") for r in requirements), extra
