"""What a benchmark figure was measured on: CPU model and instruction sets, cores, library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from crossonnx import cpu

INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
)
LIBRARIES = (
    "crossonnx", "numpy", "onnxruntime", "openvino", "tokenizers", "torch", "transformers", "sentence-transformers",
    "onnx",
)
# The flags that decide which bf16 and int8 kernels run (OpenVINO defaults to bf16 where the CPU has bf16)
BF16_FLAGS, INT8_FLAGS = cpu.BF16_FLAGS, cpu.INT8_DOT_FLAGS


def cpu_info() -> dict[str, object]:
    """CPU model name, vendor, family and model number, the SIMD flags that decide fp32/bf16/int8 kernels, and the
    CPUs this process may use. Flags alone do not tell CPU generations apart (two generations can list the same
    AVX-512 flags yet execute 512-bit instructions at different widths), hence the vendor, family and model numbers."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if key.strip() == "flags":
                    break
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    vendor, family = fields.get("vendor_id", ""), _int(fields.get("cpu family"))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return {
        "model": fields.get("model name") or platform.processor() or "unknown",
        "vendor": vendor,
        "family": family,
        "model_number": _int(fields.get("model")),
        "machine": platform.machine(),
        "cpus": cpus,
        "simd": [flag for flag in INTERESTING_FLAGS if flag in flags],
        "no_simd": [flag for flag in ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
                    if flag not in flags],
        "bf16": {flag: flag in flags for flag in BF16_FLAGS},
        "int8": {flag: flag in flags for flag in INT8_FLAGS},
        "openvino": openvino_cpu(),
    }


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def openvino_cpu() -> dict[str, object] | None:
    """What OpenVINO's CPU plugin says of this CPU: its capabilities and the precision it runs by default."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from crossonnx.engines.openvino import precision_name

    core = ov.Core()
    return {
        "version": ov.__version__.split("-")[0],
        "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "default_inference_precision": precision_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
    }


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def describe_cpu(info: dict[str, object]) -> str:
    """``cpu_info``'s record in one line. A ``core`` entry (a name for the CPU's core design that the caller added to
    the record) follows the model name."""
    family = f", family {info['family']} model {info['model_number']}" if info.get("family") is not None else ""
    core = f" {info['core']}" if info.get("core") else ""
    text = (f"{info['model']}{core} ({info['machine']}{family}, {info['cpus']} CPUs); SIMD: "
            f"{' '.join(info['simd'])}; absent: {' '.join(info['no_simd'])}")
    for kind in ("bf16", "int8"):
        if kind in info:
            text += f"; {kind}: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info[kind].items())
    ov = info.get("openvino")
    if ov:
        text += (f"; OpenVINO {ov['version']} CPU capabilities {' '.join(ov['capabilities'])}, runs "
                 f"{ov['default_inference_precision']} unless told otherwise")
    return text


def process_memory_mb(field: str = "VmRSS", pid: int | str = "self") -> float | None:
    """A memory field of /proc/PID/status in MiB: ``VmRSS`` (resident now) or ``VmHWM`` (peak resident; unlike
    ru_maxrss it does not count a parent's peak from before exec). None where it cannot be read (the process is
    gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
