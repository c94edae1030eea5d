"""The roofline: is a piece of work bound by arithmetic or by memory traffic?

A kernel that does ``flops`` floating-point operations and moves ``bytes`` to and from memory
cannot finish faster than either ``flops / peak`` (the arithmetic units flat out) or
``bytes / bandwidth`` (the memory bus flat out). The larger of the two is its roofline time, a
lower bound on the real time. Their ratio is the arithmetic intensity ``flops / bytes``; the
machine's *ridge point* ``peak / bandwidth`` separates the two regimes: below it the work is
memory-bound, above it compute-bound (Williams, Waterman and Patterson, "Roofline", CACM 2009).

``roofline(flops, bytes, peak, bandwidth)`` is the arithmetic, for any caller (chapter 06's
dispatch, a decoding step); ``measure_peak_flops`` and ``measure_bandwidth`` give the two
machine numbers measured here and now: a large matmul and a large copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Roofline:
    """The roofline of one piece of work on one machine. Times in seconds, rates per second."""

    flops: float
    bytes: float
    peak_flops: float
    bandwidth: float

    @property
    def compute_s(self) -> float:
        return self.flops / self.peak_flops

    @property
    def memory_s(self) -> float:
        return self.bytes / self.bandwidth

    @property
    def time_s(self) -> float:
        """The roofline time: no implementation can be faster."""
        return max(self.compute_s, self.memory_s)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else float("inf")

    @property
    def ridge(self) -> float:
        """The machine's ridge point, FLOPs per byte: above it compute-bound, below it memory-bound."""
        return self.peak_flops / self.bandwidth

    @property
    def bound(self) -> str:
        """"compute" or "memory": which roof is lower for this work."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


def _positive(name: str, value: object, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name}: got {value!r}, need a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: got {value!r}, need a number {'>= 0' if allow_zero else '> 0'}")
    return float(value)


def roofline(flops: float, bytes: float, peak: float, bandwidth: float) -> Roofline:
    """The roofline of ``flops`` operations moving ``bytes`` on a machine of ``peak`` FLOP/s and
    ``bandwidth`` bytes/s. ``time_s``, ``bound`` and ``intensity`` say the rest."""
    return Roofline(_positive("flops", flops, allow_zero=True), _positive("bytes", bytes, allow_zero=True),
                    _positive("peak", peak), _positive("bandwidth", bandwidth))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: first-call costs (allocation, kernel selection) are not the machine's rate
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                       repeats: int = 3) -> float:
    """FLOP/s of one (n, n) @ (n, n) matmul in ``dtype`` on ``device``, best of ``repeats``.

    This is what the installed BLAS reaches with the current thread count, not a datasheet figure.
    ``n`` defaults to 1024 on a CPU and 8192 on a GPU.
    """
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    if not isinstance(n, int) or n < 16:
        raise ValueError(f"n: got {n!r}, need an int >= 16")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2.0 * n**3 / _best_seconds(lambda: a @ b, device, repeats)


def measure_bandwidth(device: torch.device | str = "cpu", nbytes: int | None = None, repeats: int = 3) -> float:
    """Bytes/s of a large copy on ``device`` (each copied byte is read once and written once: 2 bytes moved).

    ``nbytes`` (the size of the copied tensor) defaults to 64 MB on a CPU, larger than its caches,
    and 1 GB on a GPU.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 64 * 2**20
    if not isinstance(nbytes, int) or nbytes < 2**16:
        raise ValueError(f"nbytes: got {nbytes!r}, need an int >= 65536")
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2.0 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), device, repeats)
