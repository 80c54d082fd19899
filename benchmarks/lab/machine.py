"""The CPU record of the benchmarks' results: crossonnx.bench.machine's, plus the name of AMD's core generation.

Results taken on different machines sit side by side in benchmarks/results; AMD's Zen 4 and Zen 5 list the same
AVX-512 flags (BF16, VNNI) while Zen 5 runs 512-bit instructions at twice the width, so the record names the
generation that the CPU family and flags decide.
"""

from __future__ import annotations

from typing import Any

from crossonnx.bench import machine
from crossonnx.bench.throughput import environment as bench_environment


def core_generation(vendor: str, family: int | None, flags: set[str]) -> str | None:
    """The AMD core generation where family and flags decide it (Zen 4: family 25 with AVX-512; Zen 5: family 26)."""
    if vendor != "AuthenticAMD" or family is None:
        return None
    if family == 26:
        return "Zen 5"
    if family == 25:
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    return None


def with_core(info: dict[str, Any]) -> dict[str, Any]:
    """A ``crossonnx.bench.machine.cpu_info()`` record with ``core``: the generation's name (None where not known),
    which ``describe_cpu`` prints after the model name."""
    return {**info, "core": core_generation(info["vendor"], info["family"], set(info["simd"]))}


def cpu_info() -> dict[str, Any]:
    return with_core(machine.cpu_info())


def environment() -> dict[str, Any]:
    """``crossonnx.bench.throughput.environment()``, its CPU record ``with_core``."""
    env = bench_environment()
    return {**env, "cpu": with_core(env["cpu"])}
