"""Adapters through which checks reach a student's functions, and the rule for what comes back.

A check sees only plain data: tensors, numbers, strings, None, and lists, tuples and dicts of
these. ``plain()`` enforces that by a round trip through ``torch.save`` and
``torch.load(weights_only=True)``, the same loader the grader uses on what a kernel returns, so a
notebook shows the same verdicts as ``minimoe grade``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import sys
from typing import Any

import torch

from minimoe.grading.guard import Tripped, guarded, tripped_names
from minimoe.grading.registry import StudentError


def used_reference_message(name: str, hits: list[str]) -> str:
    return (f"`{name}` called {', '.join(dict.fromkeys(hits))}: that is the package's own answer to this "
            "exercise; write it yourself")


def plain(value: Any, what: str = "the result") -> Any:
    """Return ``value`` rebuilt from plain data, or raise StudentError saying what was wrong."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not plain data"
        raise StudentError(
            f"{what} is a {type(value).__name__}; return tensors, numbers or lists/tuples/dicts of them"
            f" ({type(e).__name__})"
        ) from None


def launch_kernel(kernel: Any, grid: Any, args: list | tuple, meta: dict) -> list:
    """Launch ``kernel[grid](*args, **meta)`` and return the arguments afterwards.

    ``kernel`` must be a Triton kernel (``@triton.jit``: compiled, or interpreted on a CPU), not a
    Python function. Where the kernel is compiled and CUDA exists, tensor arguments go to the GPU
    and come back; the returned list holds each argument (tensors on the CPU) in order.
    """
    kind = type(kernel).__name__
    if kind not in ("JITFunction", "InterpretedFunction") or not type(kernel).__module__.startswith("triton"):
        raise TypeError(f"it is a {kind}, not a Triton kernel: decorate it with @triton.jit")
    if not isinstance(grid, (tuple, list)) or not 1 <= len(grid) <= 3 or not all(
            isinstance(g, int) and g >= 0 for g in grid):
        raise ValueError(f"grid: got {grid!r}, need 1 to 3 ints >= 0")
    import torch

    device = "cuda" if kind == "JITFunction" and torch.cuda.is_available() else "cpu"
    moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    kernel[tuple(grid)](*moved, **meta)
    return [a.cpu() if isinstance(a, torch.Tensor) else a for a in moved]


def _code_digest(code: Any, depth: int = 0) -> bytes:
    """A digest of a code object that is the same in every process (no addresses, no file names)."""
    h = hashlib.sha256(code.co_code + repr(code.co_names).encode() + repr(code.co_varnames).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            h.update(_code_digest(const, depth + 1) if depth < 20 else b"")
        else:
            h.update(repr(const).encode())
    return h.digest()


class LocalStudent:
    """Calls functions defined in a namespace: the notebook's own, for instant feedback."""

    def __init__(self, namespace: dict[str, Any] | None = None, protects: tuple[str, ...] = ()):
        self.namespace = namespace if namespace is not None else vars(sys.modules["__main__"])
        self.protects = tuple(protects)

    def for_check(self, ex: Any, chk: Any) -> "LocalStudent":
        """The adapter for one check of ``ex``: its package references are guarded."""
        return LocalStudent(self.namespace, ex.protects)

    def fingerprint(self, names: tuple[str, ...]) -> bytes:
        """A digest of the code of the functions ``names``: the seed key of ``check()``."""
        h = hashlib.sha256()
        for name in names:
            code = getattr(self.namespace.get(name), "__code__", None)
            h.update(name.encode() + b"\0" + (_code_digest(code) if code is not None else b""))
        return h.digest()

    def _lookup(self, name: str) -> Any:
        if name not in self.namespace:
            raise StudentError(f"`{name}` is not defined: run the cell that defines it")
        return self.namespace[name]

    def _guarded(self, name: str, run: Any, catch: Any = Exception, describe: Any = None) -> Any:
        """``run()`` with this exercise's package references guarded; the student's errors (``catch``,
        worded by ``describe``) and a tripped guard, here or on a forked rank, become StudentErrors."""
        hits: list[str] = []
        error = ""
        try:
            with guarded(self.protects) as hits:  # forked ranks inherit the traps
                out = run()
        except Tripped:
            pass
        except NotImplementedError:
            error = f"`{name}` is not written yet (it raises NotImplementedError)"
        except catch as e:  # noqa: BLE001 - the student's error becomes the check's message
            error = describe(e) if describe else f"`{name}` raised {type(e).__name__}: {e}"
            hits += [n for n in tripped_names(str(e)) if n not in hits]  # a rank that tripped the guard
        if hits:
            raise StudentError(used_reference_message(name, hits))
        if error:
            raise StudentError(error)
        return out

    def _function(self, name: str) -> Any:
        fn = self._lookup(name)
        if not callable(fn):
            raise StudentError(f"`{name}` is a {type(fn).__name__}, not a function")
        return fn

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = self._function(name)
        args, kwargs = copy.deepcopy((args, kwargs))
        return plain(self._guarded(name, lambda: fn(*args, **kwargs)), f"what `{name}` returned")

    def value(self, name: str) -> Any:
        return plain(self._lookup(name), f"`{name}`")

    def call_on_ranks(self, name: str, world: int, args_per_rank: list, driver: str = "call") -> list:
        from minimoe.parallel import RANK_TIMEOUT_S, DistributedError, call_on_ranks

        fn = self._function(name)
        args_per_rank = copy.deepcopy(args_per_rank)
        out = self._guarded(name, lambda: call_on_ranks(fn, world, args_per_rank, driver, RANK_TIMEOUT_S),
                            (DistributedError, RuntimeError), lambda e: f"`{name}` on {world} ranks: {e}")
        return plain(out, f"what `{name}` returned on {world} ranks")

    def launch(self, name: str, grid: tuple[int, ...], *args: Any, **meta: Any) -> list:
        kernel = self._lookup(name)
        args, meta = copy.deepcopy((args, meta))
        out = self._guarded(name, lambda: launch_kernel(kernel, grid, args, meta),
                            describe=lambda e: f"`{name}` raised {type(e).__name__}: {e}"[:500])
        return plain(out, f"what `{name}` wrote")
