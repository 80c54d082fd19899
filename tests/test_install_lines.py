"""Every README install line works as shown: each command runs with exactly the extras it needs, and a command whose
extra is missing prints the install line and exits non-zero, never a traceback.

Each line is emulated by ``extras.install_view`` (the packages of that line only, read from the installed metadata);
``test_base_wheel_in_a_fresh_venv`` installs the built wheel into a real new virtual environment.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tomllib

from extras import (
    DEVELOPMENT_EXTRAS,
    ROOT,
    cli_command,
    closure,
    install_view,
    project_extras,
    readme_install_lines,
    run_cli,
    run_python,
)
from installed import expected_default_precisions, expected_pending
from pairs import RANDOM_WEIGHT_GATES

LINES = readme_install_lines()
PAIR = ("how many people live in berlin", "Berlin has 3.7 million inhabitants.")
# The Spark entry point as far as it goes without a Spark session: past its imports (pyspark and what Spark's Arrow
# path needs on the driver) to its first check of the arguments; exit 2 with the message when an extra is missing.
SPARK_CALL = """
import sys
from crossonnx.errors import MissingExtraError, ScaleError
from crossonnx.scale.spark import score_dataframe
try:
    score_dataframe([], sys.argv[1])
except MissingExtraError as exc:
    print(f"crossonnx: {exc}", file=sys.stderr)
    sys.exit(2)
except ScaleError as exc:
    print(exc)
"""


def install_line(extra: str) -> str:
    return f'pip install "crossonnx[{extra}]"'


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def assert_needs(done: subprocess.CompletedProcess, extra: str) -> None:
    """Refused with the extra's install line: exit 2, one error line, no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert install_line(extra) in done.stderr, done.stderr


def test_readme_install_lines_name_exactly_the_user_facing_extras():
    extras = set(project_extras())
    named = set().union(*(line_extras for _, line_extras in LINES))
    assert ("pip install crossonnx", frozenset()) in LINES, "the README has no base install line"
    assert named <= extras, f"the README installs extras pyproject.toml does not define: {sorted(named - extras)}"
    missing = extras - DEVELOPMENT_EXTRAS - named
    assert not missing, f"pyproject.toml extras with no README install line: {sorted(missing)}"


def test_readme_gpu_install_lines_match_the_gpu_distribution():
    import re

    gpu = tomllib.loads((ROOT / "packaging" / "gpu" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8") + "".join(
        page.read_text(encoding="utf-8") for page in sorted((ROOT / "docs").rglob("*.md")))
    for extra in re.findall(r'pip install "?crossonnx-gpu\[([a-z0-9_-]+)\]', readme):
        assert extra in gpu.get("optional-dependencies", {}), extra
    assert "pip install crossonnx-gpu" in readme


def test_the_line_closures_are_what_pyproject_says():
    """The emulation's own ground truth: the base line brings no torch, no OpenVINO, no web or data stack."""
    base = closure(frozenset())
    assert {"numpy", "onnxruntime", "tokenizers", "pyyaml"} <= base
    for heavy in ("torch", "transformers", "openvino", "nncf", "starlette", "uvicorn", "pyarrow", "ray"):
        assert heavy not in base, heavy
    assert {"torch", "openvino", "nncf"} <= closure(frozenset({"export"}))  # every export builds OpenVINO's variants
    assert "starlette" in closure(frozenset({"serve"})) and "pyarrow" in closure(frozenset({"scale"}))
    spark = closure(frozenset({"spark"}))
    assert "pyspark" in spark and not {"torch", "ray", "openvino"} & spark


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> dict[frozenset[str], Path]:
    root = tmp_path_factory.mktemp("install-lines")
    return {extras: install_view(extras, root / ("-".join(sorted(extras)) or "base")) for _, extras in LINES}


def test_a_view_hides_what_its_line_does_not_install(views):
    script = ("import importlib.util as u, importlib.metadata as m, json; "
              "print(json.dumps([u.find_spec(n) is not None for n in ('onnxruntime', 'starlette', 'torch')]))")
    done = subprocess.run([sys.executable, "-S", "-c", f"import site, sys; site.addsitedir(sys.argv[1]); {script}",
                           str(views[frozenset()])], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [True, False, False]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_and_rerank(view: Path, model: Path) -> list[dict]:
    port = _free_port()
    command = cli_command(view, "serve", str(model), "--port", str(port), "--threads", "1", "--no-tune")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        answer = httpx.post(url + "/rerank", json={"query": PAIR[0], "texts": [PAIR[1], "Paris is in France."]},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("line", [line for line, _ in LINES])
def test_each_install_line_runs_its_commands_and_refuses_the_others(line, views, tiny_exports, tiny_checkpoints,
                                                                    tmp_path):
    extras = dict(LINES)[line]
    view = views[extras]
    installed = closure(extras)  # what the line brings, by distribution: an extra may bring another's packages
    model = tiny_exports["bert"]  # exported with every extra: ONNX Runtime's and OpenVINO's precisions
    from crossonnx.encoder import CrossEncoder

    expected = CrossEncoder(model, provider="cpu", threads=1).predict([PAIR, (PAIR[0], "Paris is in France.")])

    # the base runtime, on every line
    assert_ok(run_cli(view, "--help"))
    assert_ok(run_cli(view, "list"))
    assert_ok(run_cli(view, "providers"))
    info = run_cli(view, "info", str(model))
    assert_ok(info)
    assert json.loads(info.stdout)["precisions"]
    verify = run_cli(view, "verify", str(model))
    assert_ok(verify)
    assert verify.stdout.count(" ok ") >= 3 and "FAIL" not in verify.stdout
    held = set(json.loads(info.stdout)["precisions"])
    openvino_only = {"bf16", "int8-static", "int8-dynamic"} & held
    pending = expected_pending() & held  # written pending validation here (bf16 on a CPU without bf16)
    skipped = {line.split()[0]: line for line in verify.stdout.splitlines() if " skipped: " in line}
    assert set(skipped) == (pending if "openvino" in installed else openvino_only | pending)
    for precision, said in skipped.items():  # each skip says why: validation pending, or the extra to install
        assert ("pending, " in said) if precision in pending else (install_line("openvino") in said), said
    predict = run_cli(view, "predict", str(model), "--pair", *PAIR, "--threads", "1")
    assert_ok(predict)
    assert abs(json.loads(predict.stdout)["score"] - float(expected[0])) <= 1e-6
    rank = run_cli(view, "rank", str(model), PAIR[0], PAIR[1], "Paris is in France.", "--threads", "1")
    assert_ok(rank)
    assert len(rank.stdout.splitlines()) == 2
    assert_ok(run_cli(view, "warmup", str(model), "--threads", "1"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query": PAIR[0], "passage": PAIR[1]}) + "\n", encoding="utf-8")
    scored = run_cli(view, "score-file", str(model), str(rows), "--threads", "1")  # JSON lines need no extra
    assert_ok(scored)
    assert abs(json.loads(Path(scored.stdout.strip()).read_text())["score"] - float(expected[0])) <= 1e-6

    # OpenVINO
    on_openvino = run_cli(view, "predict", str(model), "--pair", *PAIR, "--provider", "openvino", "--threads", "1")
    if "openvino" in installed:
        assert_ok(on_openvino)
        assert abs(json.loads(on_openvino.stdout)["score"] - float(expected[0])) <= 1e-4
    else:
        assert_needs(on_openvino, "openvino")

    # the exporter
    if "torch" in installed:
        out = tmp_path / "exported"
        gates = [arg for gate in RANDOM_WEIGHT_GATES for arg in ("--gate", gate)]
        assert_ok(run_cli(view, "export", str(tiny_checkpoints["bert"]), "--out", str(out), *gates))
        written = set(json.loads((out / "crossonnx.json").read_text())["precisions"])
        assert written == expected_default_precisions()  # the [export] line alone builds OpenVINO's too
        assert_ok(run_cli(view, "verify", str(out)))
    else:
        assert_needs(run_cli(view, "export", str(tiny_checkpoints["bert"]), "--out", str(tmp_path / "x")), "export")
        assert_needs(run_cli(view, "build-reference", "--out", str(tmp_path / "ref")), "export")
        assert not (tmp_path / "x").exists() and not (tmp_path / "ref").exists()

    # the server
    if "starlette" in installed:
        results = _serve_and_rerank(view, model)
        by_index = {r["index"]: r["score"] for r in results}
        assert np.allclose([by_index[0], by_index[1]], expected, atol=1e-6)
    else:
        assert_needs(run_cli(view, "serve", str(model), "--port", "1"), "serve")

    # Spark DataFrames
    spark = run_python(view, SPARK_CALL, str(model))
    if "pyspark" in installed:
        assert_ok(spark)
        assert "takes a pyspark.sql.DataFrame" in spark.stdout, spark.stdout + spark.stderr
    else:
        assert_needs(spark, "spark")

    # Parquet
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"query": [PAIR[0]], "passage": [PAIR[1]]}), table)
    parquet = run_cli(view, "score-file", str(model), str(table), "--threads", "1")
    if "pyarrow" in installed:
        assert_ok(parquet)
        assert abs(pq.read_table(parquet.stdout.strip())["score"][0].as_py() - float(expected[0])) <= 1e-6
    else:
        assert_needs(parquet, "scale")
        assert not (tmp_path / "rows.scored.parquet").exists()


def test_import_crossonnx_and_every_command_module_on_the_base_line(views):
    """``import crossonnx`` and every module the CLI registers import with the base install alone."""
    modules = ["crossonnx", "crossonnx.cli", "crossonnx.serve.cli", "crossonnx.scale.cli", "crossonnx.scale",
               "crossonnx.scale.spark",
               "crossonnx.exporter", "crossonnx.verify", "crossonnx.registry", "crossonnx.encoder"]
    script = ("import importlib, site, sys; site.addsitedir(sys.argv[1]); sys.path.insert(0, sys.argv[2]); "
              "[importlib.import_module(m) for m in sys.argv[3:]]; from crossonnx import CrossEncoder")
    done = subprocess.run([sys.executable, "-S", "-c", script, str(views[frozenset()]), str(ROOT), *modules],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the built wheel and nothing else (its dependencies from the package index)."""
    root = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheel = next((root / "dist").glob("crossonnx-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    return root / "venv"


def test_base_wheel_in_a_fresh_venv(base_venv, tiny_exports, tmp_path):
    """``pip install crossonnx`` alone: the CLI scores, ranks, verifies and describes a model folder."""
    model = str(tiny_exports["bert"])
    cli = str(base_venv / "bin" / "crossonnx")
    installed = subprocess.run([str(base_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "crossonnx" in names and not names & {"torch", "openvino", "starlette", "pyarrow", "ray"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], capture_output=True, text=True, timeout=300, check=False,
                              cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    for args in (["list"], ["providers"], ["info", model], ["verify", model],
                 ["predict", model, "--pair", *PAIR], ["rank", model, PAIR[0], PAIR[1], "Paris is in France."]):
        assert_ok(run(*args))
    assert_needs(run("serve", model), "serve")
    assert_needs(run("export", "ms-marco-TinyBERT-L-6"), "export")
