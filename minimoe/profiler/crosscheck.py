"""The allocator's own record, to check the tracker against.

- CPU: ``torch.profiler`` with ``profile_memory=True`` logs every allocation and free of PyTorch's
  CPU allocator, scratch buffers inside kernels included. ``profiler_peak`` adds them up in order
  and returns the most bytes alive above where profiling started.
- CUDA: the caching allocator keeps two counters (``torch.cuda.memory_stats``).
  ``requested_bytes`` adds up the sizes callers asked for: the same unit the tracker counts
  (storage bytes), so ``cuda_crosscheck`` compares the two peaks directly, each above its own
  start, with no rounding on either side. ``allocated_bytes`` adds up the blocks handed out,
  which are larger: every request is rounded up to a multiple of 512 bytes, and a request over
  1 MiB served from a cached block gets the whole block when splitting it would leave 1 MiB or
  less (the allocator's ``should_split`` rule). ``block_bounds`` turns each request into the
  range of block sizes it can get, and ``peak_bounds`` replays the tracker's events into the
  range the allocated peak must fall in; ``cuda_crosscheck`` reports both checks.
- ``snapshot_timeline`` replays a ``torch.cuda.memory._snapshot()`` (the record behind
  pytorch.org/memory_viz) into bytes alive after each event, to lay beside the tracker's timeline.

What the tracker cannot see: allocations made and freed inside one op (a library's scratch
space, cuBLAS's workspace). They are in the allocator's counts, and the tolerance is for them.
"""

from __future__ import annotations

import torch

CUDA_ROUND = 512  # every CUDA block is a multiple of 512 bytes, 512 at least
CUDA_SMALL = 1 << 20  # requests up to 1 MiB come from the small pool, whose blocks are always split exactly
TOLERANCE = 0.02  # |tracked - allocator| / allocator on the requested-bytes peak: scratch space the tracker misses


def block_bounds(nbytes: int) -> tuple[int, int]:
    """(least, most) bytes the CUDA caching allocator counts as allocated for one request of ``nbytes``.

    Rounded up to a multiple of 512 (512 at least). Up to 1 MiB it is exact: small blocks are always
    split. Above 1 MiB a cached block is not split when the remainder would be 1 MiB or less, so the
    block can be up to 1 MiB larger than the rounded request.
    """
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes: got {nbytes!r}, need an int >= 0")
    if nbytes == 0:
        return 0, 0
    rounded = max(CUDA_ROUND, -(-nbytes // CUDA_ROUND) * CUDA_ROUND)
    return (rounded, rounded) if rounded <= CUDA_SMALL else (rounded, rounded + CUDA_SMALL)


def peak_bounds(events) -> tuple[int, int]:
    """(least, most) peak of allocated bytes above the start, replaying ``events`` in order.

    ``events``: ``(nbytes, kind)`` with kind ``"alloc"`` (a new request), ``"free"`` (one of those
    freed) or ``"free_baseline"`` (a block that existed at the start, freed). Each block's true size
    lies in ``block_bounds``; the allocated bytes above the start at any moment then lie between
    the sum of the least sizes of what is alive (minus the most of what the start lost) and the
    sum of the most (minus the least), and so does their peak.
    """
    low = high = peak_low = peak_high = 0
    for nbytes, kind in events:
        lo, hi = block_bounds(int(nbytes))
        if kind == "alloc":
            low, high = low + lo, high + hi
        elif kind == "free":
            low, high = low - lo, high - hi
        elif kind == "free_baseline":
            low, high = low - hi, high - lo
        else:
            raise ValueError(f"events: got kind {kind!r}, need 'alloc', 'free' or 'free_baseline'")
        peak_low, peak_high = max(peak_low, low), max(peak_high, high)
    return peak_low, peak_high


def tracker_events(tracker) -> list[tuple[int, str]]:
    """A ``StorageTracker``'s log as ``peak_bounds`` events: what it adopted at the start is the baseline."""
    baseline = {rid for rid, phase in zip(tracker.ev_rid, tracker.ev_phase) if phase == "before"}
    events = []
    for rid, delta, phase in zip(tracker.ev_rid, tracker.ev_delta, tracker.ev_phase):
        if phase == "before" and delta > 0:
            continue  # alive at the start: part of both sides' baseline
        if delta > 0:
            events.append((delta, "alloc"))
        else:
            events.append((-delta, "free_baseline" if rid in baseline else "free"))
    return events


def cuda_crosscheck(before: dict, after: dict, tracked_peak: int, events, tolerance: float = TOLERANCE) -> dict:
    """Compare the tracker with the CUDA allocator's statistics around a region.

    ``before``: ``torch.cuda.memory_stats()`` at the start (after ``reset_peak_memory_stats``),
    ``after``: at the end; ``tracked_peak``: the tracker's exact peak above its start; ``events``:
    ``tracker_events(tracker)``. Returns the requested-bytes check (same unit both sides; passes
    within ``tolerance``) and the allocated-bytes check (the allocator's peak against
    ``peak_bounds``; the tracker misses only whole allocations, so the peak may lie above the
    bounds by what the tolerance allows, never below them).
    """
    requested = int(after["requested_bytes.all.peak"]) - int(before["requested_bytes.all.current"])
    allocated = int(after["allocated_bytes.all.peak"]) - int(before["allocated_bytes.all.current"])
    low, high = peak_bounds(events)
    diff = (tracked_peak - requested) / requested if requested else 0.0
    return {
        "source": "torch.cuda.memory_stats requested_bytes", "allocator_peak": requested,
        "tracked_peak": int(tracked_peak), "relative_difference": diff, "tolerance": tolerance,
        "within_tolerance": abs(diff) <= tolerance,
        "allocated_peak": allocated, "allocated_bounds": (low, high),
        "allocated_within_bounds": low <= allocated <= high + tolerance * max(requested, 1),
    }


def snapshot_timeline(snapshot: dict, device: int = 0) -> list[int]:
    """Bytes alive after each event of a CUDA memory snapshot's trace, relative to where it starts.

    ``snapshot``: ``torch.cuda.memory._snapshot()`` taken with history recording on. Its trace logs
    each request (``alloc``, with the requested size) and each release (``free_requested``, same
    size); segment events (the allocator's own ``cudaMalloc`` and ``cudaFree``) are not the program's.
    """
    traces = snapshot.get("device_traces")
    if not isinstance(traces, list) or not 0 <= device < len(traces):
        raise ValueError(f"snapshot: need 'device_traces' with an entry for device {device}")
    alive, out = 0, []
    for entry in traces[device]:
        action = entry.get("action")
        if action == "alloc":
            alive += int(entry["size"])
        elif action == "free_requested":
            alive -= int(entry["size"])
        else:
            continue
        out.append(alive)
    return out


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
