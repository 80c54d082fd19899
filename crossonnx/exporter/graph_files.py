"""ONNX files of large models without holding their weights twice: weights read from an external data file on
demand, and a graph written one weight at a time."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

GRAPH_FIELD, INITIALIZER_FIELD = 7, 5  # ModelProto.graph, GraphProto.initializer
RAW_DATA_FIELD = 9  # TensorProto.raw_data
LENGTH_DELIMITED = 2


def data_file(graph: Path) -> Path:
    """Where ``graph``'s weights are kept apart from it (``save_weights_apart``, the exporter's plain graph)."""
    return graph.with_name(f"{graph.name}.data")


def save_weights_apart(model: onnx.ModelProto, out: Path, min_bytes: int = 1024) -> None:
    """Write ``model`` to ``out`` with its weights in files beside it: those already kept apart stay in their file
    (which must be in ``out``'s folder), the others of at least ``min_bytes`` go to ``out``'s data file. Readers
    that map external weights (OpenVINO, ONNX Runtime) then load the graph without copying them. ``model``'s
    tensors are left pointing at the files."""
    with open(data_file(out), "wb") as handle:
        weights = WeightsFile(handle, data_file(out).name, min_bytes)
        for tensor in model.graph.initializer:
            if is_external(tensor):
                continue
            array = numpy_helper.to_array(tensor)
            if array.nbytes >= min_bytes:
                tensor.CopyFrom(weights.add(tensor.name, array))
    declare_node_domains(model)
    onnx.save(model, str(out))


class WeightsFile:
    """Tensors appended to an open external data file (``location``: its name, relative to the graph's folder),
    each returned as its graph entry; those under ``min_bytes`` stay inline."""

    ALIGN = 64  # offsets of whole cache lines

    def __init__(self, handle: BinaryIO, location: str, min_bytes: int = 1024):
        self.handle, self.location, self.min_bytes, self.offset = handle, location, min_bytes, 0

    def add(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        if array.nbytes < self.min_bytes:
            return numpy_helper.from_array(array, name)
        pad = -self.offset % self.ALIGN
        self.handle.write(b"\0" * pad)
        self.offset += pad
        raw = np.ascontiguousarray(array).tobytes()
        self.handle.write(raw)
        tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                  data_location=onnx.TensorProto.EXTERNAL)
        tensor.dims.extend(array.shape)
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(raw)
        return tensor


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


def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor``'s value is kept in an external data file rather than in the graph."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def read_tensor(folder: Path, tensor: onnx.TensorProto, stored_type: int | None = None) -> np.ndarray:
    """``tensor``'s value, from ``folder``'s external data file where it is kept there (as ``stored_type`` where that
    differs from the type the tensor now declares: a weight converted without its data loaded)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    if not is_external(tensor) or "location" not in info:
        return numpy_helper.to_array(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(stored_type or tensor.data_type))
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


def save_self_contained(model: onnx.ModelProto, folder: Path, out: Path, halve: Collection[str] = ()) -> None:
    """Write ``model`` to ``out`` as one file with every weight inside, reading external weights from ``folder``:
    one weight in memory at a time, where ``onnx.save`` would hold the serialized model beside the loaded one.
    ``halve``: external tensors that now declare float16 while their file still holds float32 (a graph converted to
    fp16 without its weights loaded); each is converted as it is written.

    A protobuf message may carry its fields in any order and repeated fields one by one, so the file is the model
    without its graph, then the graph field: the graph without initializers, then each initializer. Each weight is
    read once: the graph's length is computed from the tensors' shapes and types.
    """
    declare_node_domains(model)
    initializers = list(model.graph.initializer)
    del model.graph.initializer[:]
    tmp = out.with_name(f".{out.name}.writing")
    try:
        graph = model.graph.SerializeToString()
        encoded = [(tensor, _embedded_size(tensor)) for tensor in initializers]
        total = len(graph) + sum(len(_field(INITIALIZER_FIELD, size)) + size for _, size in encoded)
        head = onnx.ModelProto()
        head.CopyFrom(model)
        head.ClearField("graph")
        with open(tmp, "wb") as handle:
            handle.write(head.SerializeToString())
            handle.write(_field(GRAPH_FIELD, total))
            handle.write(graph)
            for tensor, size in encoded:
                data = _embedded(folder, tensor, tensor.name in halve).SerializeToString()
                if len(data) != size:  # the graph's length written above would be wrong: never leave such a file
                    raise RuntimeError(f"weight {tensor.name!r} serialized to {len(data)} bytes, {size} expected")
                handle.write(_field(INITIALIZER_FIELD, size))
                handle.write(data)
        os.replace(tmp, out)
    finally:
        model.graph.initializer.extend(initializers)
        tmp.unlink(missing_ok=True)  # what an error left half-written


def _shell(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """What ``numpy_helper.from_array`` makes of an external tensor, less its raw data: name, dims, type."""
    shell = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type)
    shell.dims.extend(tensor.dims)
    return shell


def _embedded_size(tensor: onnx.TensorProto) -> int:
    """The bytes ``_embedded`` serializes ``tensor`` to, computed from its shape and declared type."""
    if not is_external(tensor):
        return tensor.ByteSize()
    count = int(np.prod(tensor.dims, dtype=np.int64))
    raw = count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return _shell(tensor).ByteSize() + (len(_field(RAW_DATA_FIELD, raw)) + raw if raw else 0)


def _embedded(folder: Path, tensor: onnx.TensorProto, halve: bool = False) -> onnx.TensorProto:
    """``tensor`` with its value inside (read from ``folder``'s external data where it is kept there; ``halve``:
    stored as float32, declared float16, converted as ONNX Runtime's fp16 conversion converts weights)."""
    if not is_external(tensor):
        return tensor
    if not halve:
        return numpy_helper.from_array(read_tensor(folder, tensor), tensor.name)
    from onnxruntime.transformers.float16 import convert_np_to_float16

    values = read_tensor(folder, tensor, stored_type=onnx.TensorProto.FLOAT)
    return numpy_helper.from_array(convert_np_to_float16(values).astype(np.float16), tensor.name)
