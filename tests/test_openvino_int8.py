"""OpenVINO's int8 builders (crossonnx/exporter/openvino_int8.py) within bounded memory: the memory measures change
nothing NNCF computes, the search leaves only the file it keeps, and mapped weight pages are let go of."""

from __future__ import annotations

import importlib.util
import mmap
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="needs openvino and nncf (the export extra)",
)


def _feeds(folder: Path, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` calibration feeds (one pair each) for the export in ``folder``, as the int8-static stage makes them."""
    from crossonnx.exporter.pipeline import calibration_feeds
    from crossonnx.manifest import load_manifest

    manifest = load_manifest(folder)
    feeds = calibration_feeds(folder / "tokenizer.json", manifest.tokenizer, manifest.max_length, manifest.inputs,
                              batch=1)
    return feeds[:: max(1, len(feeds) // count)][:count]


@pytest.fixture(scope="module")
def apart_graph(reference_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MiniLM's fp32 graph with its weights in a file beside it, as the export's int8 stages read it."""
    import onnx

    from crossonnx.exporter.graph_files import save_weights_apart
    from crossonnx.manifest import load_manifest

    out = tmp_path_factory.mktemp("apart") / "model_fp32_apart.onnx"
    model = onnx.load(str(reference_export / load_manifest(reference_export).entry("fp32").file))
    save_weights_apart(model, out)
    return out


def _resident_kb(path: Path) -> int:
    """This process's resident kB of its mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    target = os.path.realpath(path)
    with open("/proc/self/smaps", encoding="utf-8") as handle:
        for line in handle:
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
                inside = len(head) == 6 and head[5].rstrip("\n") == target
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_release_mapped_pages_lets_go_of_resident_pages_and_keeps_the_data(tmp_path):
    from crossonnx.exporter.openvino_int8 import release_mapped_pages

    data = np.random.default_rng(0).integers(0, 255, 32 << 20, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    data.tofile(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page touched
        assert _resident_kb(path) >= 30 << 10
        release_mapped_pages([tmp_path / "other.bin"])  # another file: nothing let go
        assert _resident_kb(path) >= 30 << 10
        release_mapped_pages([path])
        assert _resident_kb(path) < 1 << 10
        assert np.array_equal(view, data)  # read back from the page cache, unchanged
        del view


def test_weight_files_name_what_openvino_maps(apart_graph, tmp_path):
    from crossonnx.exporter.graph_files import data_file
    from crossonnx.exporter.openvino_int8 import weight_files

    assert weight_files(apart_graph) == [data_file(apart_graph)]
    assert weight_files(tmp_path / "model.xml") == [tmp_path / "model.bin"]


def test_nncf_memory_measures_change_nothing_nncf_computes(apart_graph, reference_export, tmp_path, monkeypatch):
    """SmoothQuant's early conversion and the pages let go between NNCF's steps write the same model, byte for byte,
    as NNCF alone; the model scores the same from its file as in memory (the search scores the file)."""
    import openvino as ov
    from nncf.common.factory import EngineFactory
    from nncf.quantization.algorithms.smooth_quant.openvino_backend import OVSmoothQuantAlgoBackend

    from crossonnx.exporter import openvino_int8 as q

    feeds = _feeds(reference_export, 24)
    core = ov.Core()
    structure = core.read_model(str(apart_graph))
    keep_float = q.head_matmuls(structure) + q.down_projections(structure)[:1] + q.attention_matmuls(structure)
    originals = (vars(OVSmoothQuantAlgoBackend)["weight_update_command"], vars(EngineFactory)["create"])

    with q._nncf_memory(q.weight_files(apart_graph)):  # both parts apply with the NNCF the export installs
        assert vars(OVSmoothQuantAlgoBackend)["weight_update_command"] is not originals[0]
        assert vars(EngineFactory)["create"] is not originals[1]
    assert (vars(OVSmoothQuantAlgoBackend)["weight_update_command"], vars(EngineFactory)["create"]) == originals

    # one reading for both: nodes the graph leaves unnamed are named per reading (and kept float by name)
    bounded = q.nncf_static_int8(structure, feeds, keep_float, weights=q.weight_files(apart_graph))
    assert (vars(OVSmoothQuantAlgoBackend)["weight_update_command"], vars(EngineFactory)["create"]) == originals
    ov.save_model(bounded, str(tmp_path / "bounded.xml"), compress_to_fp16=False)
    in_memory = q.run_logits(bounded, feeds, "f32")
    del bounded

    monkeypatch.setattr(q, "_nncf_memory", lambda weights: __import__("contextlib").nullcontext())
    plain = q.nncf_static_int8(structure, feeds, keep_float)
    ov.save_model(plain, str(tmp_path / "plain.xml"), compress_to_fp16=False)

    assert (tmp_path / "bounded.bin").read_bytes() == (tmp_path / "plain.bin").read_bytes()
    # the nodes NNCF adds are named from a counter of the process: the same graph, numbered on
    numbered = re.compile(r"_\d+\b")
    assert numbered.sub("_N", (tmp_path / "bounded.xml").read_text()) == numbered.sub(
        "_N", (tmp_path / "plain.xml").read_text())
    assert np.array_equal(q.run_logits(tmp_path / "bounded.xml", feeds, "f32"), in_memory)


def test_static_search_keeps_one_file_scored_as_logged(apart_graph, reference_export, tmp_path):
    from crossonnx.exporter.openvino_int8 import StaticInt8Target, quantize_static_int8, run_logits
    from crossonnx.metrics import logit_agreement

    feeds = _feeds(reference_export, 24)
    out = tmp_path / "out" / "model_int8_static.xml"
    out.parent.mkdir()
    lines: list[str] = []
    # a target every model meets: the most down-projections in float, then none (kept: the fewest), are tried
    details = quantize_static_int8(apart_graph, out, feeds, "f32",
                                   StaticInt8Target(min_spearman=-1.0, max_rel_error=float("inf")), log=lines.append)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model_int8_static.bin", "model_int8_static.xml"]
    assert [step["float_down_projections"] for step in details["search"]] == [3, 0] and len(lines) == 2
    assert details["met_target"] is True and len(details["float_matmuls"]) == 2  # the head's two MatMuls only
    kept = details["search"][-1]
    measured = logit_agreement(run_logits(out, feeds, "f32"), run_logits(apart_graph, feeds, "f32"))
    assert (measured["spearman"], measured["rel_error"]) == (kept["spearman"], kept["rel_error"])


def test_dynamic_int8_writes_the_same_file_from_mapped_weights(apart_graph, reference_export, tmp_path):
    from crossonnx.exporter.openvino_int8 import compress_dynamic_int8
    from crossonnx.manifest import load_manifest

    self_contained = reference_export / load_manifest(reference_export).entry("fp32").file
    compress_dynamic_int8(apart_graph, tmp_path / "apart.xml", "f32")
    compress_dynamic_int8(self_contained, tmp_path / "inline.xml", "f32")
    assert (tmp_path / "apart.bin").read_bytes() == (tmp_path / "inline.bin").read_bytes()
