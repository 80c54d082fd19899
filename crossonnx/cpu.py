"""What this CPU's instruction set offers, read from /proc/cpuinfo (Linux; elsewhere nothing is known)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# int8 dot products that accumulate u8 x s8 in int32 without the 16-bit intermediate of plain AVX2/AVX-512
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_bf16() -> bool:
    return not cpu_flags().isdisjoint(BF16_FLAGS)


def has_int8_dot_product() -> bool:
    """False where int8 matmuls go through a saturating 16-bit sum (no VNNI, no AMX): static int8 then needs
    NNCF's overflow fix on every layer."""
    return not cpu_flags().isdisjoint(INT8_DOT_FLAGS)
