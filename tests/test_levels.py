"""Quality levels (exact, faithful, fast) resolve to a concrete provider and precision from the folder's recorded
parity and the machine, and only ever fall back to a more accurate level; the separated Spearman they are judged on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from copy import deepcopy as copy_of
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossonnx.errors import PrecisionNotExportedError, ProviderUnavailableError
from crossonnx.levels import (
    LEVEL_TABLE,
    LEVELS,
    LevelChoice,
    Machine,
    agreement,
    resolve_level,
    shortfall,
    variant_key,
)
from crossonnx.manifest import MANIFEST_NAME, UNFUSED_GRAPH, Manifest, load_manifest
from crossonnx.metrics import spearman
from crossonnx.parity import Gate, Parity, separated_spearman

# Machines: the one the issue names (OpenVINO and bf16), one without bf16 (this AMD box), one without OpenVINO, GPUs
FULL = Machine(openvino=True, bf16=True, providers=("cpu",))
NO_BF16 = Machine(openvino=True, bf16=False, providers=("cpu",))
NO_OPENVINO = Machine(openvino=False, bf16=True, providers=("cpu",))
BARE = Machine(openvino=False, bf16=False, providers=("cpu",))
CUDA_BOX = Machine(openvino=False, bf16=False, providers=("cuda", "cpu"))
TRT_BOX = Machine(openvino=False, bf16=False, providers=("tensorrt", "cuda", "cpu"))

# Recorded parity worth each level on a trained model (figures of the real MiniLM's export, rounded)
EXACT = {"max_abs_diff": 9e-7, "spearman": 1.0, "spearman_separated": 1.0}
BF16 = {"max_abs_diff": 3.3e-3, "spearman": 0.99986, "spearman_separated": 0.99996}
FP16 = {"max_abs_diff": 1e-4, "spearman": 0.99998, "spearman_separated": 0.99999}
INT8_GOOD = {"max_abs_diff": 0.02, "spearman": 0.9993, "spearman_separated": 0.9995}
INT8_POOR = {"max_abs_diff": 0.06, "spearman": 0.9960, "spearman_separated": 0.9965}


@pytest.fixture(scope="module")
def base(tiny_exports) -> Manifest:
    """A real tiny export's manifest (BERT)."""
    return load_manifest(tiny_exports["bert"])


def folder(base: Manifest, activation: str = "sigmoid", **records: dict | None) -> Manifest:
    """``base`` holding exactly the precisions named, each with the recorded parity given (None: no record).

    Entries come from the real export (bf16 and the unfused graph share fp32's file, as an export writes them)."""
    template = base.precisions["fp32"]
    precisions = {}
    for key, record in records.items():
        name = key.replace("_", "-") if key != "fp32_unfused" else UNFUSED_GRAPH
        entry = base.precisions.get(name, template)
        parity = None
        if record is not None:
            fields = {"spearman_gated": True, "passed": True, "finite": True, **record}
            parity = replace(entry.parity or template.parity, **fields)
        precisions[name] = replace(entry, parity=parity)
    return replace(base, precisions=precisions, activation=activation)


def everything(base: Manifest) -> Manifest:
    return folder(base, fp32=EXACT, fp16=FP16, int8=INT8_GOOD, bf16=BF16, int8_static=INT8_GOOD,
                  int8_dynamic=INT8_GOOD, fp32_unfused=EXACT)


def chosen(choice: LevelChoice) -> tuple[str, str, str]:
    return choice.met, choice.provider, choice.precision


# --- the separated Spearman -------------------------------------------------------------------------------------


def spread_reference(n: int = 75, seed: int = 0) -> np.ndarray:
    """Reference scores like a trained model's on the validation pairs, with a cluster of near-tied edge cases."""
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.uniform(0.05, 0.95, n - 6))
    edge = 0.002 + np.array([0.0, 1e-5, 3e-5, 8e-5, 1.2e-4, 2e-4])  # empty strings, whitespace, "a" vs "b"
    return np.concatenate([edge, scores]).astype(np.float64)


def test_near_tied_swaps_do_not_lower_the_separated_spearman():
    reference = spread_reference()
    candidate = reference.copy()
    candidate[[0, 3]] = candidate[[3, 0]]  # the near-tied edge cases come out in another order
    candidate[[1, 5]] = candidate[[5, 1]]
    assert spearman(candidate, reference) < 0.9999  # plain Spearman is lowered ...
    assert separated_spearman(candidate, reference) == pytest.approx(1.0, abs=1e-12)  # ... the separated one not
    # small errors elsewhere that keep the order change nothing either
    noisy = candidate + np.r_[np.zeros(6), np.full(len(reference) - 6, 1e-5)]
    assert separated_spearman(noisy, reference) == pytest.approx(1.0, abs=1e-12)


def test_a_swap_of_well_separated_pairs_lowers_it_as_much_as_plain_spearman():
    reference = spread_reference()
    candidate = reference.copy()
    far = [20, 50]
    assert abs(reference[far[0]] - reference[far[1]]) > 0.2
    candidate[far] = candidate[far[::-1]]
    plain = spearman(candidate, reference)
    assert plain < 0.99
    assert separated_spearman(candidate, reference) == pytest.approx(plain, abs=1e-3)
    # a near-tie swap on top of it does not make it worse
    both = candidate.copy()
    both[[0, 3]] = both[[3, 0]]
    assert separated_spearman(both, reference) == pytest.approx(separated_spearman(candidate, reference))
    assert spearman(both, reference) < plain


def test_adjacent_but_separated_swap_still_counts():
    reference = np.linspace(0.0, 1.0, 75)  # gaps of 0.0135, far above the near-tie cut (0.005 x std = 0.0015)
    candidate = reference.copy()
    candidate[[30, 31]] = candidate[[31, 30]]
    assert separated_spearman(candidate, reference) < 1.0
    assert separated_spearman(candidate, reference) == pytest.approx(spearman(candidate, reference))


def test_without_near_ties_it_is_plain_spearman_and_scale_free():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=75)
    candidate = reference + rng.normal(scale=0.3, size=75)
    assert separated_spearman(candidate, reference, near_tie=0.0) == pytest.approx(spearman(candidate, reference))
    assert separated_spearman(candidate, reference) == pytest.approx(
        separated_spearman(candidate * 50 + 3, reference * 50 + 3))


def test_exact_reference_ties_broken_by_the_candidate_do_not_lower_it():
    reference = spread_reference()
    reference[1] = reference[0]  # ("", "") and ("   ", "\t\n") tokenize alike
    candidate = reference.copy()
    candidate[1] += 1e-6
    assert spearman(candidate, reference) < 1.0
    assert separated_spearman(candidate, reference) == pytest.approx(1.0, abs=1e-12)


def test_it_is_never_below_plain_spearman_ties_and_all():
    rng = np.random.default_rng(5)
    for _ in range(2000):
        n = int(rng.integers(2, 80))
        reference = np.round(rng.normal(size=n), int(rng.integers(0, 4)))  # exact and near ties
        candidate = reference + rng.normal(scale=float(rng.choice([1e-4, 1e-2, 0.3])), size=n)
        if rng.random() < 0.3:
            candidate = np.round(candidate, 1)  # ties in the candidate too
        plain, separated = spearman(candidate, reference), separated_spearman(candidate, reference)
        if not np.isnan(plain):
            assert separated >= plain - 1e-12, (reference, candidate)


def test_separated_spearman_edge_cases():
    assert np.isnan(separated_spearman(np.array([1.0]), np.array([1.0])))
    flat = np.zeros(5)
    assert separated_spearman(flat, flat) == 1.0  # every score equal in both: plain Spearman's answer
    assert np.isnan(separated_spearman(np.array([0.0, np.nan, 1.0]), np.array([0.0, 0.5, 1.0])))
    with pytest.raises(ValueError, match="shape"):
        separated_spearman(np.zeros(3), np.zeros(4))
    reference = np.stack([spread_reference(), -spread_reference()], axis=1)  # two labels: the worst one
    candidate = reference.copy()
    candidate[[20, 50], 1] = candidate[[50, 20], 1]
    assert separated_spearman(candidate, reference) == pytest.approx(
        separated_spearman(candidate[:, 1], reference[:, 1]))


def test_parity_records_the_separated_spearman_and_old_records_load_without_it():
    reference = spread_reference()
    candidate = reference.copy()
    candidate[[0, 3]] = candidate[[3, 0]]
    logits = np.log(reference / (1 - reference))[:, None]
    parity = Parity.measure(candidate, logits, reference, logits, Gate(0.01, 0.9995))
    assert parity.spearman < 0.9999 and parity.spearman_separated == pytest.approx(1.0)
    record = parity.to_dict()
    assert list(record)[-1] == "spearman_separated"  # the existing keys keep their order; the new one comes last
    assert Parity.from_dict(json.loads(json.dumps(record))) == parity
    old = {key: value for key, value in record.items() if key != "spearman_separated"}
    assert Parity.from_dict(old).spearman_separated is None


def test_the_export_records_it_for_every_precision(base):
    """Every precision validated at export (not one pending validation where it next runs: tests/test_first_use.py)."""
    for name, entry in base.precisions.items():
        if entry.pending is not None:
            continue
        assert entry.parity is not None and entry.parity.spearman_separated is not None, name
        assert "spearman_separated" in entry.to_dict()["parity"]


def test_an_old_folder_without_the_field_loads_and_resolves_on_plain_spearman(base, tiny_exports, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tiny_exports["bert"], copy)
    data = json.loads((copy / MANIFEST_NAME).read_text(encoding="utf-8"))
    for entry in (entry for entry in data["precisions"].values() if entry["parity"]):  # not one pending validation
        entry["parity"].pop("spearman_separated")
        entry["parity"].update({"spearman_gated": True, "passed": True, "max_abs_diff": 1e-3, "spearman": 0.99986})
    data["precisions"]["bf16"] = {**copy_of(data["precisions"]["fp32"]), "details": {"inference_precision": "bf16"}}
    data["precisions"]["fp32"]["parity"].update(max_abs_diff=1e-7, spearman=1.0)
    (copy / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    old = load_manifest(copy)
    assert all(entry.parity.spearman_separated is None for entry in old.precisions.values())
    choice = resolve_level(old, "faithful", machine=FULL)  # plain 0.99986 < 0.9999: bf16 does not qualify
    assert chosen(choice) == ("exact", "cpu", "fp32")
    assert "Spearman 0.99986 < 0.9999" in choice.reason
    data["precisions"]["bf16"]["parity"]["spearman_separated"] = 0.99995  # a new export records it
    (copy / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    assert chosen(resolve_level(load_manifest(copy), "faithful", machine=FULL)) == ("faithful", "openvino", "bf16")


# --- resolving a level ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine", [FULL, NO_BF16, NO_OPENVINO, BARE, CUDA_BOX, TRT_BOX])
def test_exact_is_fp32_on_onnx_runtime_cpu(base, machine):
    choice = resolve_level(everything(base), "exact", machine=machine)
    assert chosen(choice) == ("exact", "cpu", "fp32") and not choice.fell_back
    assert choice.reason.startswith("exact: fp32 on ONNX Runtime CPU")
    assert "fell back" not in choice.reason


def test_faithful_per_machine(base):
    full = everything(base)
    assert chosen(resolve_level(full, "faithful", machine=FULL)) == ("faithful", "openvino", "bf16")
    assert chosen(resolve_level(full, "faithful", machine=CUDA_BOX)) == ("faithful", "cuda", "fp16")
    assert chosen(resolve_level(full, "faithful", machine=TRT_BOX)) == ("faithful", "tensorrt", "fp16")
    no_unfused = folder(base, fp32=EXACT, fp16=FP16)  # TensorRT builds fp16 from the unfused graph
    assert chosen(resolve_level(no_unfused, "faithful", machine=TRT_BOX)) == ("faithful", "cuda", "fp16")
    for machine, why in [(NO_BF16, "this CPU has no bf16 arithmetic"), (NO_OPENVINO, "OpenVINO is not installed"),
                         (BARE, "OpenVINO is not installed")]:
        choice = resolve_level(full, "faithful", machine=machine)
        assert chosen(choice) == ("exact", "cpu", "fp32") and choice.fell_back
        assert "fell back to exact" in choice.reason and why in choice.reason, choice.reason


def test_faithful_needs_the_folder_to_hold_a_qualifying_precision(base):
    assert chosen(resolve_level(folder(base, fp32=EXACT), "faithful", machine=FULL))[0] == "exact"
    poor_bf16 = folder(base, fp32=EXACT, bf16={**BF16, "spearman_separated": 0.9997})
    choice = resolve_level(poor_bf16, "faithful", machine=FULL)
    assert chosen(choice) == ("exact", "cpu", "fp32") and "Spearman 0.99970 < 0.9999" in choice.reason
    wide = folder(base, fp32=EXACT, bf16={**BF16, "max_abs_diff": 0.02})
    assert "max abs diff 0.02 > 0.01" in resolve_level(wide, "faithful", machine=FULL).reason
    # raw-logit models are held to the wider logit limit, as the export gates are
    assert chosen(resolve_level(wide, "faithful", machine=FULL))[0] == "exact"
    assert chosen(resolve_level(replace(wide, activation="identity"), "faithful", machine=FULL))[0] == "faithful"


def test_fast_per_machine_and_folder(base):
    full = everything(base)
    assert chosen(resolve_level(full, "fast", machine=FULL)) == ("fast", "openvino", "int8-static")
    assert chosen(resolve_level(full, "fast", machine=NO_BF16)) == ("fast", "openvino", "int8-static")
    assert chosen(resolve_level(full, "fast", machine=NO_OPENVINO)) == ("fast", "cpu", "int8")
    no_static = folder(base, fp32=EXACT, int8=INT8_GOOD, int8_dynamic=INT8_GOOD)
    assert chosen(resolve_level(no_static, "fast", machine=FULL)) == ("fast", "openvino", "int8-dynamic")
    poor_static = folder(base, fp32=EXACT, int8=INT8_GOOD, int8_static=INT8_POOR, int8_dynamic=INT8_POOR)
    assert chosen(resolve_level(poor_static, "fast", machine=FULL)) == ("fast", "cpu", "int8")


def test_fast_falls_back_to_faithful_then_exact_never_further(base):
    poor = folder(base, fp32=EXACT, bf16=BF16, int8=INT8_POOR, int8_static=INT8_POOR)
    choice = resolve_level(poor, "fast", machine=FULL)
    assert chosen(choice) == ("faithful", "openvino", "bf16")
    assert "fell back to faithful" in choice.reason and "Spearman 0.99650 < 0.999" in choice.reason
    choice = resolve_level(poor, "fast", machine=NO_BF16)
    assert chosen(choice) == ("exact", "cpu", "fp32")
    assert "fell back to exact" in choice.reason
    assert "fast cannot be met" in choice.reason and "faithful cannot be met" in choice.reason


def test_a_record_that_cannot_vouch_for_the_rank_does_not_qualify(base):
    ungated = folder(base, fp32=EXACT, int8={**INT8_GOOD, "spearman_gated": False})
    choice = resolve_level(ungated, "fast", machine=BARE)
    assert chosen(choice) == ("exact", "cpu", "fp32") and "nearly tied" in choice.reason
    failed = folder(base, fp32=EXACT, int8={**INT8_GOOD, "passed": False})
    assert "failed its export gate" in resolve_level(failed, "fast", machine=BARE).reason
    unrecorded = folder(base, fp32=EXACT, int8=None)
    assert "no recorded parity" in resolve_level(unrecorded, "fast", machine=BARE).reason
    nan = folder(base, fp32=EXACT, int8={**INT8_GOOD, "spearman_separated": float("nan")})
    assert chosen(resolve_level(nan, "fast", machine=BARE))[0] == "exact"


def test_measured_speeds_pick_the_fastest_qualifying_variant(base):
    full = everything(base)
    speeds = {variant_key("cpu", "int8"): 300.0, variant_key("openvino", "int8-static"): 250.0,
              variant_key("openvino", "bf16"): 280.0, variant_key("cpu", "fp32"): 100.0}
    assert chosen(resolve_level(full, "fast", machine=FULL, speeds=speeds)) == ("fast", "cpu", "int8")
    # bf16 meets fast too; where it is the fastest, tune's speeds choose it for fast (not a fallback)
    choice = resolve_level(full, "fast", machine=FULL, speeds={**speeds, "openvino/bf16": 400.0})
    assert chosen(choice) == ("fast", "openvino", "bf16") and "fell back" not in choice.reason
    assert "400 pairs/s" in choice.reason and choice.basis == "tuned"
    latency = resolve_level(full, "fast", machine=FULL, speeds=speeds, speed_unit="batch-1 calls/s")
    assert "300 batch-1 calls/s" in latency.reason
    # a faster variant that does not qualify, or does not run here, is never chosen
    poor = folder(base, fp32=EXACT, bf16=BF16, int8=INT8_POOR)
    assert chosen(resolve_level(poor, "fast", machine=FULL, speeds=speeds)) == ("fast", "openvino", "bf16")
    # measured, fp32 meets faithful as well: the fastest variant meeting faithful, no fallback (static: exact's)
    choice = resolve_level(poor, "faithful", machine=NO_BF16, speeds=speeds)
    assert chosen(choice) == ("faithful", "cpu", "fp32") and "an exact variant" in choice.reason
    assert chosen(resolve_level(poor, "faithful", machine=NO_BF16)) == ("exact", "cpu", "fp32")
    # exact with OpenVINO's f32 measured faster than ONNX Runtime's
    ov = resolve_level(full, "exact", machine=FULL, speeds={"openvino/fp32": 150.0, "cpu/fp32": 121.0})
    assert chosen(ov) == ("exact", "openvino", "fp32")
    # speeds naming none of the qualifying variants: the static order
    static = resolve_level(full, "fast", machine=FULL, speeds={"cuda/fp16": 1e4})
    assert chosen(static) == ("fast", "openvino", "int8-static") and static.basis == "static rule"


def test_a_named_provider_constrains_the_choice(base):
    full = everything(base)
    assert chosen(resolve_level(full, "fast", provider="cpu", machine=FULL)) == ("fast", "cpu", "int8")
    assert chosen(resolve_level(full, "faithful", provider="CPUExecutionProvider", machine=FULL)) == (
        "exact", "cpu", "fp32")
    assert chosen(resolve_level(full, "fast", provider="OpenVINO", machine=FULL)) == (
        "fast", "openvino", "int8-static")
    choice = resolve_level(folder(base, fp32=EXACT, int8=INT8_POOR), "fast", provider="openvino", machine=NO_BF16)
    assert chosen(choice) == ("exact", "openvino", "fp32")
    with pytest.raises(ProviderUnavailableError, match="openvino"):
        resolve_level(full, "fast", provider="openvino", machine=BARE)
    with pytest.raises(ProviderUnavailableError, match="cuda"):
        resolve_level(full, "faithful", provider="cuda", machine=FULL)
    with pytest.raises(ProviderUnavailableError, match="unknown provider"):
        resolve_level(full, "fast", provider="tpu", machine=FULL)


def test_errors(base):
    with pytest.raises(ValueError, match="exact, faithful, fast"):
        resolve_level(everything(base), "fp32", machine=FULL)
    only_int8 = folder(base, int8=INT8_GOOD)
    assert chosen(resolve_level(only_int8, "fast", machine=BARE)) == ("fast", "cpu", "int8")
    with pytest.raises(PrecisionNotExportedError, match="exported: int8"):
        resolve_level(only_int8, "exact", machine=BARE)
    with pytest.raises(PrecisionNotExportedError, match="level 'faithful'"):
        resolve_level(folder(base, int8=INT8_POOR), "faithful", machine=FULL)


def test_the_thresholds_are_ordered_and_the_choice_is_printable(base):
    assert LEVELS == tuple(LEVEL_TABLE) == ("exact", "faithful", "fast")
    spearmans = [LEVEL_TABLE[name].min_spearman or 1.0 for name in LEVELS]
    assert spearmans == sorted(spearmans, reverse=True)
    choice = resolve_level(everything(base), "faithful", machine=FULL)
    assert choice.to_dict() == {"level": "faithful", "met": "faithful", "provider": "openvino", "precision": "bf16",
                                "basis": "static rule", "reason": choice.reason}
    assert "separated Spearman 0.99996" in choice.reason and "bf16 on OpenVINO" in choice.reason


def test_the_real_tiny_export_resolves(base):
    """The unedited tiny export (random weights: nearly tied reference scores, so no rank is vouched for)."""
    for level in LEVELS:
        for machine in (FULL, NO_BF16, BARE):
            assert chosen(resolve_level(base, level, machine=machine)) == ("exact", "cpu", "fp32")


def test_importing_levels_loads_no_engine_and_the_probe_works():
    code = ("import sys, crossonnx.levels as levels; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'torch')]; "
            "m = levels.Machine.probe(); assert 'cpu' in m.providers, m; print(m)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Machine(")


# --- the property: never less accurate ---------------------------------------------------------------------------

RECORDS = st.one_of(
    st.none(),
    st.fixed_dictionaries({
        "max_abs_diff": st.sampled_from([1e-7, 5e-6, 2e-5, 3e-3, 0.009, 0.011, 0.05, 0.2]),
        "spearman": st.sampled_from([1.0, 0.99999, 0.99986, 0.9995, 0.9985, 0.99, float("nan")]),
        "spearman_separated": st.sampled_from([None, 1.0, 0.99995, 0.9999, 0.99989, 0.999, 0.9989, 0.98]),
        "spearman_gated": st.booleans(),
        "passed": st.booleans(),
    }),
)
NAMES = ("fp32", "fp16", "int8", "bf16", "int8_static", "int8_dynamic", "fp32_unfused")
MACHINES = st.builds(
    Machine, openvino=st.booleans(), bf16=st.booleans(),
    providers=st.sampled_from([("cpu",), ("cuda", "cpu"), ("tensorrt", "cuda", "cpu")]),
)
SPEEDS = st.one_of(st.none(), st.dictionaries(
    st.sampled_from([variant_key(p, n) for spec in LEVEL_TABLE.values() for p, n in spec.variants]),
    st.floats(1, 1000), max_size=6))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=st.dictionaries(st.sampled_from(NAMES), RECORDS, max_size=len(NAMES)), machine=MACHINES,
       level=st.sampled_from(LEVELS), activation=st.sampled_from(["sigmoid", "identity"]), speeds=SPEEDS)
def test_a_level_never_resolves_to_something_less_accurate(base, contents, machine, level, activation, speeds):
    manifest = folder(base, activation, **contents)
    try:
        choice = resolve_level(manifest, level, machine=machine, speeds=speeds)
    except PrecisionNotExportedError:
        # only when not even exact can be met: fp32 absent or its record short of 1e-5
        assert shortfall(manifest, "fp32", "exact") is not None
        return
    asked, met = LEVELS.index(level), LEVELS.index(choice.met)
    assert met <= asked  # the level asked for, or a more accurate one
    assert shortfall(manifest, choice.precision, choice.met) is None  # its recorded agreement meets that level
    assert machine.runs(choice.provider, choice.precision) is None
    assert choice.level == level and choice.reason.startswith(f"{level}: {choice.precision} on ")
    # measured speeds decide exactly when the chosen variant is among them
    measured = variant_key(choice.provider, choice.precision) in (speeds or {})
    assert choice.basis == ("tuned" if measured else "static rule")
    if met < asked:
        assert f"fell back to {choice.met}" in choice.reason
        for skipped in LEVELS[met + 1 : asked + 1]:
            assert f"{skipped} cannot be met here" in choice.reason
            assert all(shortfall(manifest, n, skipped) or machine.runs(p, n)
                       or (p == "tensorrt" and UNFUSED_GRAPH not in manifest.precisions)
                       for p, n in LEVEL_TABLE[skipped].variants)
    else:
        assert "fell back" not in choice.reason
    parity = manifest.precisions[choice.precision].parity
    if LEVEL_TABLE[choice.met].min_spearman is not None:
        assert agreement(parity) >= LEVEL_TABLE[choice.met].min_spearman



def test_crossencoder_and_cli_take_a_level(tiny_exports, capsys):
    """A level given to CrossEncoder (and the CLI) runs the variant the resolver picks, and info() says why."""
    from crossonnx.cli import main
    from crossonnx.encoder import CrossEncoder

    folder = tiny_exports["bert"]
    pairs = [("a query", "a passage about it"), ("another query", "something else entirely")]
    for level in LEVELS:
        model = CrossEncoder(folder, precision=level, threads=1)
        chosen = model.info()["level"]
        assert chosen["level"] == level and (model.precision, model.provider) == (chosen["precision"],
                                                                                 chosen["provider"])
        assert chosen["reason"].startswith(f"{level}:")
        concrete = CrossEncoder(folder, precision=model.precision, provider=model.provider, threads=1)
        assert model.predict(pairs).tolist() == concrete.predict(pairs).tolist()
    assert CrossEncoder(folder, precision="fp32", threads=1).info()["level"] is None
    assert main(["predict", str(folder), "--precision", "fast", "--threads", "1", "--pair", *pairs[0]]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["score"] <= 1.0
