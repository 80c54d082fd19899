"""ONNX files of large models without holding their weights twice: weights read from an external data file on
demand, and a graph written one weight at a time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

GRAPH_FIELD, INITIALIZER_FIELD = 7, 5  # ModelProto.graph, GraphProto.initializer
LENGTH_DELIMITED = 2


def weights_apart(graph: Path) -> None:
    """Move ``graph``'s weights into ``NAME.data`` beside it: later passes read them from there on demand instead of
    holding another copy of the model each."""
    model = onnx.load(str(graph))
    onnx.save(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data_file(graph).name, size_threshold=1024)


def data_file(graph: Path) -> Path:
    """Where ``weights_apart`` keeps ``graph``'s weights."""
    return graph.with_name(f"{graph.name}.data")


def save_weights_apart(model: onnx.ModelProto, out: Path, min_bytes: int = 1024) -> None:
    """Write ``model`` to ``out`` with its weights in files beside it: those already kept apart stay in their file
    (which must be in ``out``'s folder), the others of at least ``min_bytes`` go to ``out``'s data file. Readers
    that map external weights (OpenVINO, ONNX Runtime) then load the graph without copying them. ``model``'s
    tensors are left pointing at the files."""
    offset = 0
    with open(data_file(out), "wb") as handle:
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                continue
            raw = numpy_helper.to_array(tensor).tobytes()
            if len(raw) < min_bytes:
                continue
            handle.write(raw)
            for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(name)
            del tensor.external_data[:]
            for key, value in (("location", data_file(out).name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += len(raw)
    declare_node_domains(model)
    onnx.save(model, str(out))


def remove_graph(graph: Path) -> None:
    """``graph`` and its weights file, if it has one."""
    graph.unlink(missing_ok=True)
    data_file(graph).unlink(missing_ok=True)


class Initializers:
    """The initializers of a graph loaded without its external data, each read on request as a fresh array: from the
    external data file (a plain read, not a memory map, so that what was read leaves memory with the array), or from
    the graph where it holds the value itself."""

    def __init__(self, folder: Path, model: onnx.ModelProto):
        self.folder = folder
        self.tensors = {init.name: init for init in model.graph.initializer}

    def __getitem__(self, name: str) -> np.ndarray:
        return read_tensor(self.folder, self.tensors[name])


def read_tensor(folder: Path, tensor: onnx.TensorProto) -> np.ndarray:
    """``tensor``'s value, from ``folder``'s external data file where it is kept there."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    if tensor.data_location != onnx.TensorProto.EXTERNAL or "location" not in info:
        return numpy_helper.to_array(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims, dtype=np.int64))
    values = np.fromfile(folder / info["location"], dtype=dtype, count=count, offset=int(info.get("offset", 0)))
    return values.reshape(tuple(tensor.dims))


@contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Run a block in ``folder``: graph tools that read external weights lazily resolve them from the working
    directory (onnx's ``numpy_helper.to_array``)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload_size: int) -> bytes:
    return _varint(number << 3 | LENGTH_DELIMITED) + _varint(payload_size)


def declare_node_domains(model: onnx.ModelProto) -> None:
    """Add an opset import for every operator domain the graph's nodes use and the model does not declare (ONNX
    Runtime's fused operators are in com.microsoft, version 1), as a valid ONNX file needs."""
    declared = {opset.domain for opset in model.opset_import}
    for domain in sorted({node.domain for node in model.graph.node} - declared - {"ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))


def save_self_contained(model: onnx.ModelProto, folder: Path, out: Path) -> None:
    """Write ``model`` to ``out`` as one file with every weight inside, reading external weights from ``folder``:
    one weight in memory at a time, where ``onnx.save`` would hold the serialized model beside the loaded one.

    A protobuf message may carry its fields in any order and repeated fields one by one, so the file is the model
    without its graph, then the graph field: the graph without initializers, then each initializer.
    """
    declare_node_domains(model)
    initializers = list(model.graph.initializer)
    del model.graph.initializer[:]
    try:
        graph = model.graph.SerializeToString()
        encoded = []  # (tensor, its size once embedded), sized without building the bytes
        for tensor in initializers:
            size = _embedded(folder, tensor).ByteSize()
            encoded.append((tensor, size))
        total = len(graph) + sum(len(_field(INITIALIZER_FIELD, size)) + size for _, size in encoded)
        head = onnx.ModelProto()
        head.CopyFrom(model)
        head.ClearField("graph")
        tmp = out.with_name(f".{out.name}.writing")
        with open(tmp, "wb") as handle:
            handle.write(head.SerializeToString())
            handle.write(_field(GRAPH_FIELD, total))
            handle.write(graph)
            for tensor, size in encoded:
                handle.write(_field(INITIALIZER_FIELD, size))
                handle.write(_embedded(folder, tensor).SerializeToString())
        os.replace(tmp, out)
    finally:
        model.graph.initializer.extend(initializers)


def _embedded(folder: Path, tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` with its value inside (read from ``folder``'s external data where it is kept there)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return tensor
    return numpy_helper.from_array(read_tensor(folder, tensor), tensor.name)
