"""``MemoryProfiler``: where every byte of a forward, a backward and an optimizer step goes.

    with MemoryProfiler(model, optimizer) as prof:
        loss = model(tokens, targets=tokens).loss
        loss.backward()
        optimizer.step()
    print(prof.table())

It runs a ``StorageTracker`` (``minimoe.profiler.tracker``) and labels what it records:

- parameters: the model's parameters, named by the module that owns them (its buffers count as other);
- gradients: a hook on each parameter (``register_post_accumulate_grad_hook``) labels its ``.grad``;
- optimizer: a hook after each ``optimizer.step()`` labels every tensor in ``optimizer.state``;
- activations: ``saved_tensors_hooks`` labels each tensor autograd saves for backward; tensors
  made in forward that backward frees (a checkpoint's inputs) and tensors rebuilt by activation
  checkpointing during backward count as activations too;
- kv_cache: a ``KVCache`` given as ``kv_cache=`` or labelled with ``prof.label(cache, "kv_cache")``;
- temporaries and other: everything else, freed inside the region or still alive at its end.

Forward hooks on every submodule say which module made what, so ``by_module()`` can say which
block (or which expert layer) holds what at the peak.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Iterable

import torch
from torch import nn

from minimoe.profiler.categories import CATEGORIES, check_category, stronger
from minimoe.profiler.tracker import Record, StorageTracker

SUPPORTED_DEVICES = ("cpu", "cuda")


def _resolve_device(device: Any, model: nn.Module | None) -> torch.device:
    if device is None:
        p = next(iter(model.parameters()), None) if model is not None else None
        device = p.device if p is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: got {device!r}, need 'cpu' or 'cuda'") from None
    if dev.type not in SUPPORTED_DEVICES:
        raise ValueError(f"device: got {str(dev)!r}; the memory profiler tracks 'cpu' and 'cuda' tensors only "
                         f"(on {dev.type} there is no allocator record to check it against)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: got {str(dev)!r}, but CUDA is not available on this machine")
        dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    return dev


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    """Every tensor inside ``obj``: a tensor, a module, an optimizer, a KV cache, or containers of them."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            yield from _tensors(list(state.values()))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif hasattr(obj, "k") and hasattr(obj, "v"):  # minimoe.model.KVCache
        yield from _tensors([obj.k, obj.v])


class MemoryProfiler:
    """Track every tensor byte on one device inside a ``with`` block, by category and by module.

    ``model``, ``optimizer``, ``kv_cache``: what to label (any may be None). ``device``: 'cpu' or
    'cuda' (default: the model's). ``crosscheck=True`` also asks the allocator: on CPU it runs
    ``torch.profiler`` with ``profile_memory=True`` (slower), on CUDA it compares with the caching
    allocator's statistics (``minimoe.profiler.crosscheck.cuda_crosscheck``). ``cuda_history=True``
    records CUDA allocation history for ``cuda_snapshot`` and ``export_cuda_snapshot``.

    The design follows PyTorch's own tools: ``torch.distributed._tools.MemTracker`` (a
    ``TorchDispatchMode`` that counts storages by category and module) and CUDA's memory snapshot
    (``torch.cuda.memory._record_memory_history`` / ``_snapshot``, viewed at
    https://pytorch.org/memory_viz), which records every allocator event with its stack.
    """

    _active: "MemoryProfiler | None" = None

    def __init__(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                 kv_cache: Any = None, device: str | torch.device | None = None, crosscheck: bool = False,
                 cuda_history: bool = False):
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model: got {type(model).__name__}, need a torch.nn.Module or None")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: got {type(optimizer).__name__}, need a torch.optim.Optimizer or None")
        self.model, self.optimizer, self.kv_cache = model, optimizer, kv_cache
        self.device = _resolve_device(device, model)
        if cuda_history and self.device.type != "cuda":
            raise ValueError(f"cuda_history: needs a CUDA device, the profiler's device is {self.device}")
        self.crosscheck_enabled, self.cuda_history = bool(crosscheck), bool(cuda_history)
        self.tracker: StorageTracker | None = None
        self.baseline = 0
        self.seconds = 0.0
        self.allocator: dict | None = None
        self._done = False
        self._in_step = False
        self._started = False
        self._stack: list[tuple[str, bool]] = []  # (module name, pushed during backward)
        self._rebuilt: list[Record] = []  # made while a checkpointed module is being rebuilt
        self._handles: list = []
        self._param_names: dict[int, str] = {}

    # --- where we are ------------------------------------------------------------------------------
    def _phase(self) -> str:
        if not self._started:
            return "before"
        if self._in_step:
            return "optimizer"
        return "backward" if torch._C._current_graph_task_id() != -1 else "forward"

    def _module(self) -> str:
        backward = torch._C._current_graph_task_id() != -1
        for name, pushed_in_backward in reversed(self._stack):
            if pushed_in_backward == backward:
                return name
        return "-"

    def _on_new(self, rec: Record) -> None:
        # Made inside a module's forward while backward runs: activation checkpointing rebuilding a block.
        if rec.phase == "backward" and any(in_backward for _, in_backward in self._stack):
            self._rebuilt.append(rec)

    # --- the with block ----------------------------------------------------------------------------
    def __enter__(self) -> "MemoryProfiler":
        if MemoryProfiler._active is not None:
            raise RuntimeError("MemoryProfiler: another MemoryProfiler is already running; nesting is not "
                               "supported (each would see the other's bookkeeping). Exit the outer one first.")
        if self._done:
            raise RuntimeError("MemoryProfiler: this profiler has run already; make a new one for a new region")
        MemoryProfiler._active = self
        # Tensors in reference cycles die when the cycle collector runs, at moments that differ from
        # run to run; collect them now and hold the collector off, so the numbers repeat exactly.
        gc.collect()
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._start()
        except BaseException:
            MemoryProfiler._active = None
            if self._gc_was_enabled:
                gc.enable()
            raise
        return self

    def _start(self) -> None:
        self.tracker = StorageTracker(self.device, self._phase, self._module, self._on_new)
        if self.model is not None:
            self._param_names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
            for name, p in self.model.named_parameters():
                self._label_param(p, name)
                if p.requires_grad:
                    h = p.register_post_accumulate_grad_hook(lambda p, name=name: self._label_grad(p, name))
                    self._handles.append(h)
            for name, b in self.model.named_buffers():  # state that is not trained (a router's bias): "other"
                self.tracker.adopt(b, "other", name, _owner(name))
            for name, module in self.model.named_modules():
                if name:
                    self._handles.append(module.register_forward_pre_hook(
                        lambda m, args, name=name: self._push(name)))
                    self._handles.append(module.register_forward_hook(
                        lambda m, args, out, name=name: self._pop(name), always_call=True))
        if self.optimizer is not None:
            self._label_optimizer()
            self._handles.append(self.optimizer.register_step_pre_hook(lambda *a: self._step(True)))
            self._handles.append(self.optimizer.register_step_post_hook(lambda *a: self._step(False)))
        if self.kv_cache is not None:
            self.label(self.kv_cache, "kv_cache")
        self.baseline = self.tracker.total
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._saved_hooks.__enter__()
        self._allocator_start()
        self._started = True
        self._t0 = time.perf_counter()
        self.tracker.__enter__()

    def __exit__(self, *exc) -> None:
        try:
            if getattr(self, "_gc_was_enabled", False):
                gc.enable()
            self.tracker.__exit__(*exc)
            self.seconds = time.perf_counter() - self._t0
            self._saved_hooks.__exit__(*exc)
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._allocator_stop()
            # Label once more what is alive now (gradients or state made some other way than hooks see).
            if self.model is not None:
                for name, p in self.model.named_parameters():
                    if p.grad is not None:
                        self._label_grad(p, name)
            if self.optimizer is not None:
                self._label_optimizer()
            if self.kv_cache is not None:
                self.label(self.kv_cache, "kv_cache")
            self.tracker.stop()
        finally:
            self._done = True
            MemoryProfiler._active = None

    # --- hooks -------------------------------------------------------------------------------------
    def _push(self, name: str) -> None:
        backward = torch._C._current_graph_task_id() != -1
        if not backward:  # a recomputation that stopped early leaves entries behind: drop them
            self._stack = [e for e in self._stack if not e[1]]
        self._stack.append((name, backward))

    def _pop(self, name: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == name:
                del self._stack[i:]
                break
        if self._rebuilt and not any(in_backward for _, in_backward in self._stack):
            # The rebuilt module is done: what it made and is still alive is kept for backward.
            for rec in self._rebuilt:
                if rec.alive:
                    rec.label = stronger(rec.label, "activations")
            self._rebuilt.clear()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        rec = self.tracker.record_of(t)
        if rec is not None:
            self.tracker.adopt(t, "activations")
        return t

    def _label_param(self, p: torch.Tensor, name: str) -> None:
        self.tracker.adopt(p, "parameters", name, _owner(name))

    def _label_grad(self, p: torch.Tensor, name: str) -> None:
        if p.grad is not None:
            self.tracker.adopt(p.grad, "gradients", name + ".grad", _owner(name))

    def _label_optimizer(self) -> None:
        for p, state in self.optimizer.state.items():
            name = self._param_names.get(id(p), "")
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    self.tracker.adopt(value, "optimizer", f"{name}.{key}" if name else key, _owner(name))

    def _step(self, starting: bool) -> None:
        self._in_step = starting
        if not starting:
            self._label_optimizer()

    def label(self, obj: Any, category: str, name: str = "") -> None:
        """Label the tensors in ``obj`` (a tensor, module, optimizer, KV cache, or a list of them).

        A tensor made before the region is added to it (and to the baseline, if the region has not
        started). A stronger label already given wins (``minimoe.profiler.categories``).
        """
        check_category(category)
        if self.tracker is None or not self.tracker.recording:
            raise RuntimeError("MemoryProfiler.label: call it inside the `with MemoryProfiler(...)` block")
        for t in _tensors(obj):
            self.tracker.adopt(t, category, name)

    # --- the allocator's own record ------------------------------------------------------------------
    def _allocator_start(self) -> None:
        if self.device.type == "cuda":
            if self.cuda_history:
                torch.cuda.memory._record_memory_history(max_entries=100_000)
            if self.crosscheck_enabled:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                self._cuda_before = torch.cuda.memory_stats(self.device)
        elif self.crosscheck_enabled:
            from torch.profiler import ProfilerActivity, profile

            self._torch_profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._torch_profiler.__enter__()

    def _allocator_stop(self) -> None:
        if not self.crosscheck_enabled:
            return
        if self.device.type == "cuda":
            from minimoe.profiler.crosscheck import cuda_crosscheck, tracker_events

            torch.cuda.synchronize(self.device)
            self.allocator = cuda_crosscheck(self._cuda_before, torch.cuda.memory_stats(self.device),
                                             self.peak_above_start, tracker_events(self.tracker))
            return
        from minimoe.profiler.crosscheck import TOLERANCE, profiler_peak

        self._torch_profiler.__exit__(None, None, None)
        peak, tracked = profiler_peak(self._torch_profiler, self.device), self.peak_above_start
        diff = (tracked - peak) / peak if peak else 0.0
        self.allocator = {"source": "torch.profiler memory events", "allocator_peak": int(peak),
                          "tracked_peak": int(tracked), "relative_difference": diff, "tolerance": TOLERANCE,
                          "within_tolerance": abs(diff) <= TOLERANCE}

    def cuda_snapshot(self) -> dict:
        """The CUDA allocator's snapshot of this region (needs ``cuda_history=True``): segments and the event
        trace; ``minimoe.profiler.crosscheck.snapshot_timeline`` turns it into bytes alive per event."""
        if self.device.type != "cuda" or not self.cuda_history:
            raise RuntimeError("cuda_snapshot: needs MemoryProfiler(device='cuda', cuda_history=True)")
        return torch.cuda.memory._snapshot()

    def export_cuda_snapshot(self, path: str) -> str:
        """Write the CUDA allocator's snapshot (open it at https://pytorch.org/memory_viz). CUDA only."""
        if self.device.type != "cuda" or not self.cuda_history:
            raise RuntimeError("export_cuda_snapshot: needs MemoryProfiler(device='cuda', cuda_history=True)")
        torch.cuda.memory._dump_snapshot(path)
        torch.cuda.memory._record_memory_history(enabled=None)
        return path

    # --- results -----------------------------------------------------------------------------------
    def _need_result(self) -> StorageTracker:
        if self.tracker is None:
            raise RuntimeError("MemoryProfiler: nothing recorded yet; use it as `with MemoryProfiler(...) as prof:`")
        return self.tracker

    @property
    def records(self) -> list[Record]:
        return self._need_result().records

    @property
    def peak(self) -> int:
        """The most bytes alive at once, baseline included."""
        return self._need_result().peak

    @property
    def peak_above_start(self) -> int:
        """The peak minus what was alive when the region started."""
        return self.peak - self.baseline

    def _replay(self, stop: int | None = None):
        """Per-record bytes alive after event ``stop`` (all events when None)."""
        tr = self._need_result()
        alive: dict[int, int] = {}
        n = len(tr.ev_rid) if stop is None else stop + 1
        for rid, delta in zip(tr.ev_rid[:n], tr.ev_delta[:n]):
            alive[rid] = alive.get(rid, 0) + delta
        return {rid: b for rid, b in alive.items() if b}

    def _by_category(self, alive: dict[int, int]) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        recs = self.records
        for rid, b in alive.items():
            out[recs[rid].category()] += b
        return out

    def at_peak(self) -> dict[str, int]:
        """Bytes by category at the moment of the peak."""
        tr = self._need_result()
        return self._by_category(self._replay(tr.peak_event)) if tr.peak_event >= 0 else dict.fromkeys(CATEGORIES, 0)

    def at_exit(self) -> dict[str, int]:
        """Bytes by category alive when the region ended."""
        return self._by_category(self._replay())

    def at_phase_end(self, phase: str = "forward") -> dict[str, int]:
        """Bytes by category at the last event of the first run of ``phase`` ("forward": when backward starts)."""
        tr = self._need_result()
        if phase not in tr.ev_phase:
            raise ValueError(f"phase: got {phase!r}; this profile has {sorted(set(tr.ev_phase))}")
        i = tr.ev_phase.index(phase)
        while i + 1 < len(tr.ev_phase) and tr.ev_phase[i + 1] == phase:
            i += 1
        return self._by_category(self._replay(i))

    def timeline(self) -> dict[str, list]:
        """Bytes by category after every event: ``{"phase": [...], "op": [...], category: [...]}``."""
        tr = self._need_result()
        recs = self.records
        totals = dict.fromkeys(CATEGORIES, 0)
        out: dict[str, list] = {c: [] for c in CATEGORIES}
        for rid, delta in zip(tr.ev_rid, tr.ev_delta):
            totals[recs[rid].category()] += delta
            for c in CATEGORIES:
                out[c].append(totals[c])
        out["phase"], out["op"] = list(tr.ev_phase), list(tr.ev_op)
        return out

    def max_by_category(self) -> dict[str, int]:
        """The most bytes each category held at any moment (not at the same moment)."""
        tl = self.timeline()
        return {c: max(tl[c], default=0) for c in CATEGORIES}

    def by_module(self, depth: int = 2, when: str = "peak") -> dict[str, dict[str, int]]:
        """Bytes by module (its name cut to ``depth`` parts: ``blocks.0``) and category, at the peak or at exit."""
        if when not in ("peak", "exit"):
            raise ValueError(f"when: got {when!r}, need 'peak' or 'exit'")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth: got {depth!r}, need an int >= 1")
        tr = self._need_result()
        alive = self._replay(tr.peak_event if when == "peak" else None)
        out: dict[str, dict[str, int]] = {}
        for rid, b in alive.items():
            rec = self.records[rid]
            module = ".".join(rec.module.split(".")[:depth])
            row = out.setdefault(module, dict.fromkeys(CATEGORIES, 0))
            row[rec.category()] += b
        return dict(sorted(out.items(), key=lambda kv: -sum(kv[1].values())))

    def peak_where(self) -> dict[str, str | int]:
        tr = self._need_result()
        i = tr.peak_event
        return {"event": i, "phase": tr.ev_phase[i] if i >= 0 else "-", "op": tr.ev_op[i] if i >= 0 else "-"}

    def to_dict(self) -> dict:
        """Every number the profiler found, as plain data (for tests and for saving)."""
        tr = self._need_result()
        return {
            "device": str(self.device), "baseline": self.baseline, "peak": self.peak,
            "peak_above_start": self.peak_above_start, "peak_where": self.peak_where(),
            "at_peak": self.at_peak(), "at_exit": self.at_exit(),
            "at_forward_end": self.at_phase_end("forward") if "forward" in tr.ev_phase else None, "max": self.max_by_category(),
            "by_module": self.by_module(), "n_events": len(tr.ev_rid), "n_storages": len(tr.records),
            "seconds": self.seconds, "allocator": self.allocator,
        }

    def table(self) -> str:
        from minimoe.profiler.report import format_table

        return format_table(self)

    def plot(self, ax=None, title: str | None = None):
        from minimoe.profiler.report import plot_timeline

        return plot_timeline(self, ax=ax, title=title)


def _owner(name: str) -> str:
    """The module that owns a parameter: ``blocks.0.attn.wq.weight`` -> ``blocks.0.attn.wq``."""
    return name.rsplit(".", 1)[0] if "." in name else "-"
