"""A variant the export could not validate (bf16 on a CPU without bf16) is written pending validation and validated
where it next runs: on first use, against the folder's stored PyTorch scores under the export's gate, the verdict
kept in the crossonnx cache; levels never pick it on the strength of anything less.

This machine has no bf16 arithmetic, so bf16's own first use cannot run here: the mechanism is tested for real on
precisions this machine runs (a copy of a real export with int8 or fp32 marked pending the way the export marks bf16).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossonnx import CrossEncoder
from crossonnx.errors import PrecisionNotExportedError, ProviderUnavailableError, ValidationError
from crossonnx.first_use import VALIDATED_FOLDER, checker, pending_record
from crossonnx.levels import LEVEL_TABLE, LEVELS, Machine, resolve_level, shortfall
from crossonnx.manifest import MANIFEST_NAME, PENDING, Manifest, load_manifest
from crossonnx.parity import Gate, Parity
from crossonnx.precisions import NEEDS_CPU_BF16, PRECISIONS
from crossonnx.verify import verify_folder
from installed import cpu_has_bf16, expected_pending

OPENVINO = __import__("importlib").util.find_spec("openvino") is not None
NO_BF16_HERE = pytest.mark.skipif(cpu_has_bf16() or not OPENVINO,
                                  reason="needs OpenVINO on a CPU without bf16 (the export then defers bf16)")

FULL = Machine(openvino=True, bf16=True, providers=("cpu",))
NO_BF16 = Machine(openvino=True, bf16=False, providers=("cpu",))


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A crossonnx cache of this test's own, so no verdict of another test is found."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CROSSONNX_CACHE", str(root))
    return root


def mark_pending(source: Path, folder: Path, precision: str) -> Path:
    """A copy of a real export with ``precision`` written as the export writes bf16 on a CPU without bf16: no parity
    record, the pending record with the gate the export applied to it."""
    shutil.copytree(source, folder)
    data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    entry = data["precisions"][precision]
    gate = Gate(**entry["parity"]["gate"])
    entry["details"][PENDING] = pending_record(NEEDS_CPU_BF16, "marked pending by the test", gate)
    entry["parity"] = {}
    (folder / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return folder


def perturb_reference(folder: Path, by: float) -> None:
    path = folder / "reference.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["scores"] = [score + by for score in data["scores"]]
    path.write_text(json.dumps(data), encoding="utf-8")


def verdict_files(cache: Path) -> list[Path]:
    return sorted((cache / VALIDATED_FOLDER).glob("*.json"))


# --- (a) the export writes bf16 pending where this CPU cannot validate it ----------------------------------------


@NO_BF16_HERE
def test_an_export_here_writes_bf16_pending_validation(tiny_exports, tiny_checkpoints, tmp_path):
    manifest = load_manifest(tiny_exports["bert"])
    assert expected_pending() == {"bf16"}
    bf16 = manifest.precisions["bf16"]
    assert bf16.parity is None and bf16.file == manifest.precisions["fp32"].file
    assert bf16.details["inference_precision"] == "bf16"
    record = bf16.pending
    # the gate it must meet is the export's own, with the --gate override the export was given (spearman=off)
    assert record["gate"] == {"max_abs_diff": PRECISIONS["bf16"].gate.max_abs, "min_spearman": None}
    assert record["needs"] == NEEDS_CPU_BF16 and "bf16" in record["where"] and "no bf16" in record["why"]
    assert "bf16" not in {item.precision for item in manifest.left_out}

    # the export says so in one line; named, it is written too (it cannot fail a validation that did not run)
    from crossonnx.exporter.pipeline import export_model

    lines: list[str] = []
    out = export_model(str(tiny_checkpoints["bert"]), out=tmp_path / "named", precisions="fp32,bf16",
                       log=lines.append)
    said = [line for line in lines if "bf16" in line]
    assert len(said) == 1 and "written pending validation" in said[0], lines
    assert "awaits validation on a CPU with bf16" in said[0] and "max abs diff <= 0.01" in said[0], said
    named = load_manifest(out)
    assert set(named.precisions) == {"fp32", "bf16"} and named.precisions["bf16"].pending["gate"]["min_spearman"]


@NO_BF16_HERE
def test_loading_pending_bf16_here_says_it_awaits_validation(tiny_exports, cache):
    folder = tiny_exports["bert"]
    with pytest.raises(ProviderUnavailableError) as raised:
        CrossEncoder(folder, precision="bf16")
    message = str(raised.value)
    assert "this CPU has no bf16 arithmetic" in message and "awaits validation on a CPU with bf16" in message
    assert "Use another precision of this folder (fp32, " in message
    # verify: skipped here as pending (the CLI's default), an error when asked for it by name on this machine
    results = verify_folder(folder, skip_unavailable=True)
    assert results["bf16"]["pending"] is True and results["bf16"]["skipped"].startswith("pending, bf16 awaits")
    assert all(results[p]["passed"] for p in results if p != "bf16")
    with pytest.raises(ProviderUnavailableError, match="awaits validation"):
        verify_folder(folder, ["bf16"])
    assert not verdict_files(cache)  # nothing was validated


def test_without_openvino_bf16_is_left_out_as_before():
    """The check runs in a process where openvino cannot be imported."""
    import subprocess

    from test_openvino import OPENVINO_BLOCKED

    script = OPENVINO_BLOCKED + """
from crossonnx.exporter.pipeline import build_problem, default_precisions, unbuildable_defaults
assert "bf16" not in default_precisions()
[left] = [item for item in unbuildable_defaults() if item.precision == "bf16"]
print(left.reason())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("not built: bf16 is built and validated with OpenVINO, which is not installed")


# --- (b) first use validates, keeps the verdict, refuses a failure ------------------------------------------------


def test_first_use_validates_keeps_the_verdict_and_reads_it_back(tiny_exports, tmp_path, cache):
    source = tiny_exports["bert"]
    recorded = load_manifest(source).precisions["int8"].parity
    folder = mark_pending(source, tmp_path / "pending", "int8")
    assert load_manifest(folder).precisions["int8"].pending is not None

    encoder = CrossEncoder(folder, precision="int8", provider="cpu")
    here = encoder.info()["validated_here"]
    assert here["on_this_machine"] and here["passed"] and here["pairs"] == recorded.n
    # the export's own rule on the same engine and pairs: the figures the export recorded
    assert here["max_abs_diff"] == pytest.approx(recorded.max_abs_diff, rel=1e-3, abs=1e-6)
    assert here["gate"] == {"max_abs_diff": recorded.gate.max_abs_diff, "min_spearman": recorded.gate.min_spearman}
    [stored] = verdict_files(cache)
    assert here["file"] == str(stored)
    data = json.loads(stored.read_text(encoding="utf-8"))
    assert data["precision"] == "int8" and data["provider"] == "cpu" and data["parity"]["passed"] is True
    identity = data["identity"]
    assert {"folder", "reference", "cpu", "flags", "versions", "gate"} <= set(identity)
    assert identity["folder"]["files"]["int8"][0] == load_manifest(folder).precisions["int8"].sha256

    # a second load reads the verdict instead of scoring again: a figure planted in the file comes back
    data["parity"]["max_abs_diff"] = planted = 1.234e-7
    stored.write_text(json.dumps(data), encoding="utf-8")
    before = stored.stat().st_mtime_ns
    again = CrossEncoder(folder, precision="int8", provider="cpu")
    assert again.info()["validated_here"]["max_abs_diff"] == planted
    assert stored.stat().st_mtime_ns == before and verdict_files(cache) == [stored]
    pairs = [("a query", "a passage")] * 3
    assert np.array_equal(again.predict(pairs), encoder.predict(pairs))

    # a folder validated at export has no verdict of its own
    assert CrossEncoder(source, precision="int8", provider="cpu").info()["validated_here"] is None
    # verify validates a pending entry where it runs, under the gate of its first use
    result = verify_folder(folder, ["int8"])["int8"]
    assert result["pending"] and result["passed"] and result["gate"] == here["gate"]


def test_first_use_runs_at_the_folders_max_length(tiny_exports, tmp_path, cache):
    """A shorter max_length of the caller's does not change what is validated (the export's pairs and length)."""
    folder = mark_pending(tiny_exports["bert"], tmp_path / "pending", "fp32")
    encoder = CrossEncoder(folder, precision="fp32", provider="cpu", max_length=8)
    assert encoder.max_length == 8 and encoder.info()["validated_here"]["max_abs_diff"] <= 1e-5


def test_a_first_use_that_misses_its_gate_is_refused_every_time(tiny_exports, tmp_path, cache):
    folder = mark_pending(tiny_exports["bert"], tmp_path / "perturbed", "int8")
    gate = load_manifest(folder).precisions["int8"].pending["gate"]["max_abs_diff"]
    perturb_reference(folder, by=4 * gate)
    for _ in range(2):  # measured, then read back from the cache: refused both times
        with pytest.raises(ValidationError) as raised:
            CrossEncoder(folder, precision="int8", provider="cpu")
        message = str(raised.value)
        assert "'int8' failed its first-use validation on this machine (cpu)" in message
        assert f"> {gate:g}" in message and f"its gate: max abs diff <= {gate:g}" in message
        assert "Use another precision of this folder (fp32, " in message and "or a level" in message
        [stored] = verdict_files(cache)
        assert str(stored) in message
    assert json.loads(stored.read_text(encoding="utf-8"))["parity"]["passed"] is False
    result = verify_folder(folder, ["int8"])["int8"]
    assert result["pending"] and result["passed"] is False and result["max_abs_diff"] > gate
    # the other precisions of the folder still load (their gates were met at export)
    assert CrossEncoder(folder, precision="fp32").predict(("a", "b")) is not None


def test_tune_leaves_out_a_variant_that_fails_its_first_use_and_measures_the_rest(tiny_exports, tmp_path, cache):
    """A pending variant that misses its gate here is not measured (nor chosen), and the tune still completes."""
    from crossonnx.tune import choices, tune

    folder = mark_pending(tiny_exports["bert"], tmp_path / "perturbed", "int8")
    perturb_reference(folder, by=4 * load_manifest(folder).precisions["int8"].pending["gate"]["max_abs_diff"])
    said: list[str] = []
    result = tune(folder, seconds=1, threads=1, log=said.append)
    measured = {(v.provider, v.precision) for v in result.variants}
    assert ("cpu", "fp32") in measured and ("cpu", "int8") not in measured
    assert any(line.startswith("cpu/int8 left out: precision 'int8' failed its first-use validation") for line in said)
    picked = choices(load_manifest(folder), result, "throughput", Machine.probe(), checker(folder, 1))
    assert not any("int8" in chosen and "int8-" not in chosen for chosen in picked.values())


def test_first_use_imports_no_torch(tiny_exports, tmp_path):
    """The first-use validation is runtime code: it runs where torch and transformers cannot be imported."""
    from test_torch_free import BLOCK_HEAVY_IMPORTS, _run

    folder = mark_pending(tiny_exports["bert"], tmp_path / "pending", "int8")
    script = BLOCK_HEAVY_IMPORTS + """
import json, os
os.environ["CROSSONNX_CACHE"] = sys.argv[2]
from crossonnx import CrossEncoder
encoder = CrossEncoder(sys.argv[1], precision="int8", provider="cpu")
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "sentence_transformers", "onnx"})
print(json.dumps({"passed": encoder.info()["validated_here"]["passed"], "heavy": heavy}))
"""
    done = _run(script, str(folder), str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"passed": True, "heavy": []}


# --- (c) levels never resolve less accurately than promised -------------------------------------------------------

EXACT = {"max_abs_diff": 9e-7, "spearman": 1.0, "spearman_separated": 1.0}
GOOD_BF16 = {"max_abs_diff": 3.3e-3, "spearman": 0.99986, "spearman_separated": 0.99996}


@pytest.fixture(scope="module")
def base(tiny_exports) -> Manifest:
    return load_manifest(tiny_exports["bert"])


def record(template: Parity, **fields: object) -> Parity:
    return replace(template, **{"spearman_gated": True, "passed": True, "finite": True, "failures": (), **fields})


def pending_bf16(base: Manifest, int8: dict | None = None) -> Manifest:
    """fp32 recorded exact, bf16 pending (as an export on a CPU without bf16 writes it), int8 optional."""
    fp32 = base.precisions["fp32"]
    bf16 = replace(fp32, parity=None, details={"inference_precision": "bf16", PENDING: pending_record(
        NEEDS_CPU_BF16, "the exporting CPU has no bf16 arithmetic", Gate(1e-2, 0.9995))})
    precisions = {"fp32": replace(fp32, parity=record(fp32.parity, **EXACT)), "bf16": bf16}
    if int8 is not None:
        precisions["int8"] = replace(base.precisions["int8"], parity=record(fp32.parity, **int8))
    return replace(base, precisions=precisions, activation="sigmoid")


def test_a_pending_bf16_qualifies_only_on_a_passing_verdict_here(base):
    manifest = pending_bf16(base)
    template = base.precisions["fp32"].parity
    asked: list[tuple[str, str]] = []

    def verdicts(parity: Parity | None):
        def check(provider: str, precision: str) -> Parity | None:
            asked.append((provider, precision))
            return parity
        return check

    # no verdict (none given, or none to be had here): faithful falls back to exact and says why
    for check in (None, verdicts(None)):
        choice = resolve_level(manifest, "faithful", machine=FULL, check_pending=check)
        assert (choice.met, choice.precision) == ("exact", "fp32") and choice.fell_back
        assert "bf16 on OpenVINO: awaits validation on this machine" in choice.reason
    # a CPU without bf16 never asks: it cannot run bf16, which awaits validation on a CPU that can
    asked.clear()
    choice = resolve_level(manifest, "faithful", machine=NO_BF16, check_pending=verdicts(record(template, **GOOD_BF16)))
    assert choice.precision == "fp32" and not asked
    assert "this CPU has no bf16 arithmetic; it awaits validation on a CPU with bf16" in choice.reason
    # a passing verdict that meets faithful: bf16, and the reason gives the figures measured here
    choice = resolve_level(manifest, "faithful", machine=FULL, check_pending=verdicts(record(template, **GOOD_BF16)))
    assert (choice.met, choice.provider, choice.precision) == ("faithful", "openvino", "bf16")
    assert "validated on this machine at first use: max abs diff 0.0033, separated Spearman 0.99996" in choice.reason
    # passing bf16's own gate is not enough for faithful's stricter rank threshold
    short = record(template, **{**GOOD_BF16, "spearman_separated": 0.9996})
    choice = resolve_level(manifest, "faithful", machine=FULL, check_pending=verdicts(short))
    assert choice.precision == "fp32" and "Spearman 0.99960 < 0.9999" in choice.reason
    # a failed verdict
    failed = record(template, **GOOD_BF16, passed=False, failures=("max abs diff 0.02 > 0.01",))
    choice = resolve_level(manifest, "faithful", machine=FULL, check_pending=verdicts(failed))
    assert choice.precision == "fp32" and "failed its first-use validation here: max abs diff 0.02" in choice.reason
    # only a variant the resolution could pick is checked: exact never asks, fast asks only where int8 is short
    asked.clear()
    resolve_level(manifest, "exact", machine=FULL, check_pending=verdicts(None))
    good_int8 = pending_bf16(base, int8={"max_abs_diff": 0.02, "spearman": 0.9993, "spearman_separated": 0.9995})
    assert resolve_level(good_int8, "fast", machine=FULL, check_pending=verdicts(None)).precision == "int8"
    assert not asked


RECORDS = st.one_of(st.none(), st.fixed_dictionaries({
    "max_abs_diff": st.sampled_from([1e-7, 2e-5, 3e-3, 0.009, 0.011, 0.05]),
    "spearman": st.sampled_from([1.0, 0.99986, 0.9995, 0.998, float("nan")]),
    "spearman_separated": st.sampled_from([None, 1.0, 0.99995, 0.9999, 0.9996, 0.999, 0.98]),
    "spearman_gated": st.booleans(),
    "passed": st.booleans(),
}))
MACHINES = st.builds(Machine, openvino=st.booleans(), bf16=st.booleans(), providers=st.just(("cpu",)))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(verdict=RECORDS, int8=RECORDS, machine=MACHINES, level=st.sampled_from(LEVELS),
       speeds=st.one_of(st.none(), st.fixed_dictionaries({"openvino/bf16": st.floats(1, 1000),
                                                          "cpu/int8": st.floats(1, 1000)})))
def test_a_pending_variant_never_makes_a_level_less_accurate(base, verdict, int8, machine, level, speeds):
    manifest = pending_bf16(base, int8=int8)
    template = base.precisions["fp32"].parity
    measured = record(template, **verdict) if verdict is not None else None
    choice = resolve_level(manifest, level, machine=machine, speeds=speeds,
                           check_pending=lambda provider, precision: measured)
    assert LEVELS.index(choice.met) <= LEVELS.index(level)
    if choice.precision == "bf16":  # only on a passing verdict measured here that meets the level met
        assert machine.bf16 and machine.openvino and measured is not None and measured.passed
        assert shortfall(manifest, "bf16", choice.met, measured) is None
        assert "validated on this machine at first use" in choice.reason
        spec = LEVEL_TABLE[choice.met]
        if spec.max_abs is not None:
            assert measured.max_abs_diff <= spec.max_abs
    else:
        assert shortfall(manifest, choice.precision, choice.met) is None


def test_the_encoders_check_validates_a_pending_variant_for_real(tiny_exports, tmp_path, cache):
    """``first_use.checker`` as a CrossEncoder passes it: the real first-use validation, run at resolution."""
    folder = mark_pending(tiny_exports["bert"], tmp_path / "pending", "fp32")
    check = checker(folder, threads=1)
    choice = resolve_level(load_manifest(folder), "exact", machine=NO_BF16, check_pending=check)
    assert (choice.precision, choice.provider) == ("fp32", "cpu")
    assert "validated on this machine at first use" in choice.reason
    assert len(verdict_files(cache)) == 1  # measured once, then read back by the encoder
    encoder = CrossEncoder(folder, precision="exact", provider="cpu")
    assert encoder.precision == "fp32" and encoder.info()["validated_here"]["passed"]
    assert len(verdict_files(cache)) == 1

    # reference scores beyond the gate: nothing meets exact, and nothing less accurate is offered instead
    broken = mark_pending(tiny_exports["bert"], tmp_path / "broken", "fp32")
    perturb_reference(broken, by=1e-3)
    with pytest.raises(PrecisionNotExportedError, match="failed its first-use validation here: max abs diff"):
        resolve_level(load_manifest(broken), "exact", machine=NO_BF16, check_pending=checker(broken, threads=1))

    # bf16 pending on this CPU without bf16, with a machine that claims bf16: the real check cannot load it
    if "bf16" in expected_pending():
        choice = resolve_level(load_manifest(tiny_exports["bert"]), "faithful", machine=FULL,
                               check_pending=checker(tiny_exports["bert"], threads=1))
        assert choice.met == "exact" and "bf16 on OpenVINO: awaits validation on this machine" in choice.reason
