"""Find host synchronisations: every place a device value is read back to Python.

On a GPU, ``tensor.item()``, ``int(tensor)``, ``tensor.tolist()``, ``torch.nonzero`` (its output
size depends on the data) and their relatives make the host wait until the device has finished
everything queued before them. One such read per MoE layer per step is enough to starve the GPU
between kernels, and it rules out CUDA graphs. The reads happen in Python, so they can be caught
on a CPU: ``HostReads`` is a ``TorchFunctionMode`` that sees every torch call made inside it.

    with HostReads() as reads:           # records
        expert_ffn(x, idx, w, wg, wu, wd, backend="torch")
    reads.found                          # [] : nothing read back

    with HostReads(strict=True):         # raises AssertionError at the first read
        ...

Each entry of ``found`` names the call and the innermost line of minimoe (or of the caller)
that made it, so a notebook can show *where* a sync happens, not only that one does.

Chapter 06 shows it at work; ``tests/test_dispatch.py`` uses it (strict) on every sync-free path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

# Calls whose result is a Python value computed from device data, or whose output size is.
READS = {
    torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.__bool__: "bool(tensor)",
    torch.Tensor.__int__: "int(tensor)", torch.Tensor.__float__: "float(tensor)",
    torch.Tensor.__index__: "tensor used as an index", torch.Tensor.nonzero: "nonzero", torch.nonzero: "nonzero",
    torch.bincount: "bincount", torch.Tensor.bincount: "bincount", torch.unique: "unique",
    torch.Tensor.unique: "unique", torch.masked_select: "masked_select", torch.Tensor.masked_select: "masked_select",
    torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu()",
}


@dataclass(frozen=True)
class HostRead:
    """One read: what was called, and the file, line and function that called it."""

    call: str
    file: str  # relative to the package (``moe/layer.py``), else the file's name
    line: int
    function: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"

    @property
    def brief(self) -> str:
        """Without the line number (stable when the file is edited): ``tolist in grouped_mm (dispatch/sort.py)``."""
        return f"{self.call} in {self.function} ({self.file})"

    def __str__(self) -> str:
        return f"{self.call} at {self.where}"


def _caller(call: str) -> HostRead:
    """The read, placed at the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if "/torch/" not in name and not name.endswith("dispatch/debug.py"):
            short = name.rsplit("/minimoe/", 1)[-1] if "/minimoe/" in name else name.rsplit("/", 1)[-1]
            return HostRead(call, short, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return HostRead(call, "?", 0, "?")


class HostReads(TorchFunctionMode):
    """Record (or, with ``strict=True``, refuse) every torch call that reads device data to the host.

    Boolean-mask indexing (``x[mask]``) counts too: its result's size comes from the mask's values.
    """

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = bool(strict)
        self.found: list[HostRead] = []

    def _read(self, call: str) -> None:
        read = _caller(call)
        self.found.append(read)
        if self.strict:
            raise AssertionError(f"{call} reads a device value back to the host ({read.where})")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self._read(READS[func])
        elif func is torch.Tensor.__getitem__ and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in index):
                self._read("indexing with a boolean mask")
        return func(*args, **(kwargs or {}))

    def where(self) -> list[str]:
        """The distinct places that read (with line numbers), in the order first seen."""
        return list(dict.fromkeys(str(r) for r in self.found))

    def brief(self) -> list[str]:
        """The distinct places that read, without line numbers, in the order first seen."""
        return list(dict.fromkeys(r.brief for r in self.found))
