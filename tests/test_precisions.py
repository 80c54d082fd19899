"""The precision table (crossonnx/precisions.py) drives the manifest, the engines, the export and its gates."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

from crossonnx import cli
from crossonnx.engines import (
    ENGINE_OF,
    OPENVINO_ONLY,
    TENSORRT_PRECISIONS,
    resolve_provider,
    validation_provider,
)
from crossonnx.engines import openvino as ov_engine
from crossonnx.errors import ExportError, PrecisionNotExportedError, ProviderUnavailableError
from crossonnx.manifest import PRECISIONS as MANIFEST_PRECISIONS
from crossonnx.parity import Gate
from crossonnx.precisions import (
    DEFAULT_PRECISION,
    GRAPHS,
    OPENVINO,
    OPENVINO_BF16,
    OPENVINO_F32,
    PRECISIONS,
    ROWS,
    TENSORRT,
    UNFUSED_GRAPH,
)
from installed import expected_default_precisions

NAMES = [row.name for row in ROWS]


def test_rows_are_consistent() -> None:
    graphs = [row.name for row in GRAPHS]
    assert len(set(graphs)) == len(graphs) and graphs[-1] == UNFUSED_GRAPH and UNFUSED_GRAPH not in PRECISIONS
    assert DEFAULT_PRECISION in PRECISIONS
    for index, row in enumerate(GRAPHS):
        assert row.description and row.file and row.providers, row
        assert set(row.providers) <= set(ENGINE_OF), row
        if row.built_from is not None:  # built from a graph an earlier stage wrote
            assert row.built_from in graphs[:index], row


def test_the_manifest_and_the_cli_list_every_row() -> None:
    assert {row.name: row.description for row in ROWS} == MANIFEST_PRECISIONS
    assert list(MANIFEST_PRECISIONS) == NAMES
    for command in (["export", "--help"], ["predict", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main(command)
        text = "".join(out.getvalue().split())  # argparse wraps lines, also at hyphens
        help_text = text[text.index("--precisionPRECISION"):]
        for name in NAMES:
            assert name in help_text, (command, name)


@pytest.mark.parametrize("activation", ["sigmoid", "identity", "softmax"])
def test_every_row_gate_is_what_validation_applies(activation: str) -> None:
    from crossonnx.exporter.validate import default_gates, parse_gate_overrides

    gates = default_gates(activation)
    assert list(gates) == [row.name for row in GRAPHS]
    bounded = activation != "identity"
    for row in GRAPHS:
        limit = row.gate.max_abs if bounded else row.gate.max_abs_logits
        assert gates[row.name] == Gate(max_abs_diff=limit, min_spearman=row.gate.min_spearman)
        loosened = parse_gate_overrides([f"{row.name}:max_abs=2,spearman=off"], gates)[row.name]
        assert loosened == Gate(max_abs_diff=2.0, min_spearman=None)
    with pytest.raises(ExportError):
        parse_gate_overrides(["fp64:max_abs=1"], gates)


def test_every_openvino_row_maps_to_its_hint() -> None:
    for row in ROWS:
        if OPENVINO in row.providers:
            assert ov_engine.PRECISIONS[row.name] == (row.name, row.openvino_hint)
            assert row.openvino_hint in (OPENVINO_F32, OPENVINO_BF16)
        else:
            assert row.name not in ov_engine.PRECISIONS and row.openvino_hint is None
    assert set(OPENVINO_ONLY) == {row.name for row in ROWS if set(row.providers) == {OPENVINO}}


def test_the_table_decides_which_provider_auto_picks() -> None:
    for row in ROWS:
        openvino_only = row.name in OPENVINO_ONLY
        cpu = resolve_provider("auto", ["openvino", "cpu"], False, precision=row.name).provider
        assert cpu == ("openvino" if openvino_only else "cpu")
        if openvino_only:
            with pytest.raises(ProviderUnavailableError, match="OpenVINO engine, which is not installed"):
                resolve_provider("auto", ["tensorrt", "cuda", "cpu"], True, precision=row.name)
            continue
        gpu = resolve_provider("auto", ["tensorrt", "cuda", "cpu"], True, precision=row.name).provider
        assert gpu == ("tensorrt" if TENSORRT in row.providers else "cuda")
        assert (row.name in TENSORRT_PRECISIONS) == (TENSORRT in row.providers)
    for row in GRAPHS:
        assert validation_provider(row.name) == row.providers[0]


def test_engines_refuse_what_their_rows_do_not_list(tmp_path) -> None:
    from crossonnx.engines import onnxruntime as ort_engine

    for row in ROWS:
        if TENSORRT not in row.providers:  # refused before the folder is read
            with pytest.raises(PrecisionNotExportedError, match="not supported on TensorRT"):
                ort_engine.graph_for(None, tmp_path, row.name, "tensorrt", 8, 64)  # type: ignore[arg-type]
        if OPENVINO not in row.providers:
            with pytest.raises(PrecisionNotExportedError, match="does not run on OpenVINO"):
                ov_engine.OpenVinoEngine.load(tmp_path, None, row.name, threads=1)  # type: ignore[arg-type]


def test_the_export_stages_follow_the_table() -> None:
    from crossonnx.exporter.pipeline import BUILDERS, EXPORT_PRECISIONS, STAGES, ExportRequest, default_precisions

    assert set(BUILDERS) == {row.name for row in GRAPHS}  # one builder per row, none without a row
    assert [stage.row for stage in STAGES] == list(GRAPHS)
    for stage in STAGES:
        assert (stage.file, stage.extra_files) == (stage.row.file, stage.row.extra_files)
        assert stage.always == any(row.built_from == stage.precision for row in GRAPHS)
    assert tuple(NAMES) == EXPORT_PRECISIONS
    assert set(default_precisions()) == expected_default_precisions()
    request = ExportRequest.check(
        ",".join(reversed(sorted(default_precisions()))), max_length=None, opset=17, gate_overrides=(),
        tensorrt=True, trust_remote_code=False, allow_pickle=False,
    )
    assert request.precisions == (*[name for name in NAMES if name in default_precisions()], UNFUSED_GRAPH)


def test_the_benchmark_worker_names_every_row() -> None:
    from crossonnx.bench import worker

    assert tuple(NAMES) == worker.CROSSONNX_PRECISIONS
    for row in ROWS:
        for provider in row.providers:
            assert worker.crossonnx_variant(worker.engine_name(provider, row.name)) == (provider, row.name)


def test_the_table_imports_nothing_heavy() -> None:
    code = (
        "import sys, crossonnx.precisions; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'numpy', 'onnx', 'onnxruntime', 'openvino', 'torch', 'transformers', 'tokenizers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
