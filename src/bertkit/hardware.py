"""What this CPU is, read from /proc/cpuinfo: its name and the instruction-set flags precision choices depend on."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

BF16_FEATURES = ("amx_bf16", "avx512_bf16")  # native bf16 matmul (anything else emulates it, slower than fp32)


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo; None where there is none (or no /proc)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    return frozenset((_cpuinfo("flags") or "").split())


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU (or one with `flags`) multiplies bf16 natively (AMX, AVX512-BF16); elsewhere bf16 is
    emulated and slower than fp32."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return any(f in flags for f in BF16_FEATURES)
