"""Choosing bf16 or fp32 by measurement, not by assumption.

bf16 autocast halves the time of a matmul on GPUs and on CPUs with native bf16 (AVX-512-bf16, AMX),
but on CPUs without it (AVX2 only) PyTorch emulates bf16 and a matmul becomes tens of times slower.
`precision="auto"` times one matmul of each kind once per process and picks the faster.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from wam.errors import ArgumentError

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def bf16_is_faster(device_type: str = "cpu", n: int = 512) -> bool:
    """True when an n x n bf16 matmul beats fp32 on this device (measured, median of 3)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False

    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return sorted(times)[1]

    return best(torch.bfloat16) < 0.8 * best(torch.float32)


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """ "auto" -> "bf16" or "fp32" for this device; "bf16"/"fp32" pass through."""
    if precision not in PRECISIONS:
        raise ArgumentError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_is_faster(device_type) else "fp32"
    return precision


def autocast_context(precision: str, device_type: str = "cpu"):
    """An autocast context for the resolved precision (a no-op for fp32)."""
    if resolve_precision(precision, device_type) == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_description() -> str:
    """The CPU's model name, with " (AVX-512 bf16)" where it has native bf16: what a recorded speed came from."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        import platform

        return platform.processor() or platform.machine() or "unknown"
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown"
    )
    return model + (" (AVX-512 bf16)" if "avx512_bf16" in info else "")
