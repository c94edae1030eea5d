"""A tracker of storages: every tensor allocation an op makes, and every free, seen from Python.

``StorageTracker`` is a ``TorchDispatchMode``: it sits below autograd, so it sees each aten op
(the ops a forward, a backward and an optimizer step are made of) with real tensors. After an op
runs, each output whose storage is new is recorded once, however many views of it exist later,
and a weak reference to the storage reports the moment it is freed. Counting storages, not
tensors, is what makes a view, a reshape or a transpose cost nothing, as it costs nothing.

Pre-existing storages (weights made before the region, the batch) are recorded only when they
are ``adopt``-ed: they form the baseline. Allocations made inside a kernel and freed before it
returns (a library's scratch buffer) are invisible here; ``minimoe.profiler.crosscheck`` measures
how much that misses against the allocator's own record.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from minimoe.profiler.categories import check_category, stronger


@dataclass
class Record:
    """One storage: its bytes, where and when it was made, its label, and whether it was freed."""

    id: int
    nbytes: int
    op: str  # the aten op that made it ("(adopted)" for storages that existed before)
    phase: str  # "before", "forward", "backward" or "optimizer"
    module: str  # the innermost module running when it was made, or "-"
    label: str | None = None
    freed_phase: str | None = None  # the phase it was freed in; None while alive
    names: list[str] = field(default_factory=list)  # names given when labelled ("blocks.0.attn.wq.weight")
    ref: object = None  # the weak reference that reports the free

    @property
    def alive(self) -> bool:
        return self.freed_phase is None

    def category(self) -> str:
        """The final category: its label, else activation (made in forward, freed by backward),
        temporary (freed inside the region) or other (still alive at the end)."""
        if self.label is not None:
            return self.label
        if self.freed_phase is None:
            return "other"
        if self.phase == "forward" and self.freed_phase == "backward":
            return "activations"
        return "temporaries"


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    if not isinstance(t, torch.Tensor) or is_traceable_wrapper_subclass(t) or t.is_meta:
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested, functional)
        return None


class StorageTracker(TorchDispatchMode):
    """Records storages on one device. ``phase`` and ``module`` are asked of the owner at each allocation."""

    def __init__(self, device: torch.device, phase: Callable[[], str], module: Callable[[], str],
                 on_new: Callable[[Record], None] = lambda rec: None):
        super().__init__()
        self.device = device
        self._phase, self._module, self._on_new = phase, module, on_new
        self.records: list[Record] = []
        self.live: dict[int, Record] = {}  # StorageImpl address -> record, while alive
        # The event log: event i changed record ev_rid[i] by ev_delta[i] bytes, during ev_phase[i], in op ev_op[i].
        self.ev_rid: list[int] = []
        self.ev_delta: list[int] = []
        self.ev_phase: list[str] = []
        self.ev_op: list[str] = []
        self.total = 0  # exact bytes alive (the allocator's blocks are larger: see crosscheck.block_bounds)
        self.peak, self.peak_event = 0, -1
        self.recording = True

    # --- bookkeeping ---------------------------------------------------------------------------
    def _event(self, rec: Record, delta: int, op: str, phase: str) -> None:
        self.ev_rid.append(rec.id)
        self.ev_delta.append(delta)
        self.ev_phase.append(phase)
        self.ev_op.append(op)
        self.total += delta
        if self.total > self.peak:
            self.peak, self.peak_event = self.total, len(self.ev_rid) - 1

    def _new(self, storage: torch.UntypedStorage, op: str, phase: str, module: str, label: str | None) -> Record:
        rec = Record(len(self.records), storage.nbytes(), op, phase, module, label)
        key = storage._cdata
        rec.ref = weakref.ref(storage, lambda _ref, key=key, rec=rec: self._freed(key, rec))
        self.records.append(rec)
        self.live[key] = rec
        self._event(rec, rec.nbytes, op, phase)
        return rec

    def _freed(self, key: int, rec: Record) -> None:
        if not self.recording or not rec.alive:
            return
        phase = self._phase()
        rec.freed_phase = phase
        if self.live.get(key) is rec:
            del self.live[key]
        self._event(rec, -rec.nbytes, "(free)", phase)

    def record_of(self, t: torch.Tensor) -> Record | None:
        s = _storage(t)
        return None if s is None else self.live.get(s._cdata)

    def adopt(self, t: torch.Tensor, label: str | None = None, name: str = "", module: str = "-",
              op: str = "(adopted)") -> Record | None:
        """Record ``t``'s storage if it is on this device and not recorded yet; apply ``label``."""
        s = _storage(t)
        if s is None or s.device != self.device or s.nbytes() == 0:
            return None
        rec = self.live.get(s._cdata)
        if rec is None:
            rec = self._new(s, op, self._phase(), module, None)
        if label is not None:
            rec.label = stronger(rec.label, check_category(label))
        if rec.module == "-" and module != "-":
            rec.module = module
        if name and name not in rec.names:
            rec.names.append(name)
        return rec

    def stop(self) -> None:
        """Stop listening: drop the weak references so that later frees report nothing."""
        self.recording = False
        for rec in self.records:
            rec.ref = None

    # --- the dispatch mode -----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.recording:
            return out
        inputs = {s._cdata for s in map(_storage, tree_flatten((args, kwargs))[0]) if s is not None}
        fresh_alias = func is torch.ops.aten.lift_fresh.default  # torch.tensor(data): made just before this op
        phase = module = None
        for t in tree_flatten(out)[0]:
            s = _storage(t)
            if s is None or s.device != self.device:
                continue
            key = s._cdata
            rec = self.live.get(key)
            if rec is not None:  # an in-place op or a view; a resize_ may have grown it
                n = s.nbytes()
                if n != rec.nbytes:
                    self._event(rec, n - rec.nbytes, str(func), self._phase())
                    rec.nbytes = n
                continue
            if (key in inputs and not fresh_alias) or s.nbytes() == 0:
                continue  # a view of a storage made before the region: not an allocation
            if phase is None:
                phase, module = self._phase(), self._module()
            self._on_new(self._new(s, str(func).removeprefix("aten."), phase, module, None))
        return out
