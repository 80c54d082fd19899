"""export/profile_export.py and export/seed_shapes.py: one export's time and peak memory per step, measured in a
child process, and the table they write."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))

from profile_export import profile_export  # noqa: E402
from seed_shapes import _rows, step_costs, write_table  # noqa: E402


def test_an_export_is_profiled_step_by_step_and_tabled(tmp_path: Path, tiny_checkpoints) -> None:
    from crossonnx.checkpoints.synthetic import RANDOM_WEIGHT_GATES
    from crossonnx.manifest import load_manifest

    out = tmp_path / "bert"
    gates = [arg for gate in RANDOM_WEIGHT_GATES for arg in ("--gate", gate)]
    profile = profile_export(tiny_checkpoints["bert"], out, [*gates, "--precision", "fp32,int8"], echo=False)
    steps = [step["step"] for step in profile["steps"]]
    assert steps[0] == "starting python" and steps[-1].startswith("writing ")
    assert "fusing transformer operators" in steps and "validating int8 against PyTorch" in steps
    assert all(step["seconds"] >= 0 for step in profile["steps"])
    assert profile["seconds"] >= sum(step["seconds"] for step in profile["steps"]) - 1
    # the whole run's peak (VmHWM) bounds every step's sampled peak, and a real export holds a model and its libraries
    assert 100 < max(step["peak_rss_mb"] for step in profile["steps"]) <= profile["peak_rss_mb"]

    costs = step_costs(profile)
    assert set(costs) == {"fp32", "int8"} and all({"build_s", "build_peak_mb", "validate_s"} <= set(c)
                                                  for c in costs.values())
    rows = _rows("tiny-bert", out, profile)
    assert {row["precision"] for row in rows} == set(load_manifest(out).precisions) == {"fp32", "int8"}
    table = tmp_path / "PARITY.md"
    write_table(rows, table, {"crossonnx": "test"})
    text = table.read_text(encoding="utf-8")
    assert "| tiny-bert | bert |" in text and f"| {profile['peak_rss_mb']} |" in text
    assert table.with_suffix(".json").is_file()


def test_a_precision_written_pending_validation_is_tabled_as_such(tmp_path: Path, tiny_exports) -> None:
    """bf16 exported on a CPU without bf16 is in the folder without a parity record: its row says it awaits
    validation instead of showing figures it does not have."""
    from crossonnx.manifest import load_manifest
    from installed import expected_pending

    folder = tiny_exports["bert"]
    pending = {name for name, entry in load_manifest(folder).precisions.items() if entry.pending is not None}
    assert pending == expected_pending()
    rows = _rows("tiny-bert", folder, None)
    assert {row["precision"] for row in rows if row.get("pending")} == pending
    table = tmp_path / "PARITY.md"
    write_table(rows, table, {"crossonnx": "test"})
    text = table.read_text(encoding="utf-8")
    for precision in pending:
        assert f"| tiny-bert | {precision} | – | written, not validated here: " in text
