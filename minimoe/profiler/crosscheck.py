"""The allocator's own record, to check the tracker against.

- CPU: ``torch.profiler`` with ``profile_memory=True`` logs every allocation and free of PyTorch's
  CPU allocator, scratch buffers inside kernels included. ``profiler_peak`` adds them up in order
  and returns the most bytes alive above where profiling started.
- CUDA: ``torch.cuda.max_memory_allocated`` is the caching allocator's own peak (blocks rounded
  up to 512 bytes), read by ``MemoryProfiler(crosscheck=True)`` on a CUDA device.
"""

from __future__ import annotations

import torch


def profiler_peak(prof, device: torch.device | str = "cpu") -> int:
    """Peak bytes above the start from a finished ``torch.profiler.profile(profile_memory=True)``."""
    device = torch.device(device)
    want = torch._C._autograd.DeviceType.CPU if device.type == "cpu" else torch._C._autograd.DeviceType.CUDA
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == want]
    events.sort(key=lambda e: e.start_ns())  # stable: events at the same instant keep the log's order
    alive = peak = 0
    for e in events:
        alive += e.nbytes()
        peak = max(peak, alive)
    return peak


def overhead(fn, repeat: int = 3, **profiler_kwargs) -> dict[str, float]:
    """Seconds ``fn()`` takes alone and inside a ``MemoryProfiler`` (best of ``repeat``), and their ratio."""
    import time

    from minimoe.profiler.profiler import MemoryProfiler

    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat: got {repeat!r}, need an int >= 1")

    def best(run) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return min(times)

    def profiled() -> None:
        with MemoryProfiler(**profiler_kwargs):
            fn()

    plain = best(fn)
    with_profiler = best(profiled)
    return {"plain_s": plain, "profiled_s": with_profiler, "ratio": with_profiler / plain}
