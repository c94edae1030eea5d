"""Keep the package's own answer out of a student's function while a check runs it.

An exercise may name the functions that compute its answer
(``exercise(..., protects=("minimoe.moe.switch_aux_loss",))``). While the student's function
runs for one of that exercise's checks, ``guarded()`` makes each of them fail, however the
student reached it:

- a Python function has its code object swapped for a trap, so calls through the module, through a
  name imported or captured earlier, a ``functools.partial`` or a bound method all trip it;
- anything else (a builtin such as ``torch.softmax``, a tensor method) is replaced where it is
  looked up, for the time of the call;
- a profile hook also catches a call of the original code object or builtin by another route (a
  copy made with ``types.FunctionType``, a reference captured before the call).

Afterwards everything is put back, and the names that were called come back to the check (a trap
the student changed or a profile hook they removed counts as a call).

This runs inside the student's own process, which the student controls: a deliberate effort (say,
restoring the original code object from inside the function, or pasting the package's source)
defeats it. The README says what remains honour code. The module uses only the standard library,
so the grader can also send its source into a kernel.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from contextlib import contextmanager
from typing import Any, Iterator

GLOBAL = "__minimoe_guard__"  # the name a code trap looks up in the protected function's module
_MISSING = object()


def tripped_names(message: str) -> list[str]:
    """The protected names in an error that a forked process reported (``"... Tripped: a.b, c.d"``)."""
    import re

    found: list[str] = []
    for group in re.findall(r"Tripped: ((?:[\w.]+(?:, )?)+)", message):
        found += [n for n in group.split(", ") if n and n not in found]
    return found


class Tripped(Exception):
    """A student's function called a protected function."""

    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(", ".join(names))


def resolve(dotted: str) -> tuple[Any, str, Any]:
    """``(holder, attribute, object)`` for ``module.attr`` or ``module.Class.attr``."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        holder, name = obj, parts[cut]
        for name in parts[cut:]:
            holder = obj
            if isinstance(holder, type):
                obj = next((vars(k)[name] for k in holder.__mro__ if name in vars(k)), _MISSING)
            else:
                obj = getattr(holder, name, _MISSING)
            if obj is _MISSING:
                break
        if obj is not _MISSING:
            return holder, name, obj
    raise LookupError(f"{dotted}: no such function")


def function_of(obj: Any) -> types.FunctionType | None:
    """The plain Python function behind ``obj`` (a function, staticmethod, classmethod, property)."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return obj if isinstance(obj, types.FunctionType) else None


class _Recorder:
    def __init__(self) -> None:
        self.hits: list[str] = []

    def hit(self, dotted: str) -> None:
        self.hits.append(dotted)
        raise Tripped([dotted])


def _trap_code(fn: types.FunctionType, dotted: str) -> types.CodeType:
    """A code object that reports ``dotted`` to the module's recorder and raises.

    It has ``fn``'s number of free variables (a code object can only replace one with as many)
    and reaches the recorder through the module's globals, which ``guarded()`` sets.
    """
    free = fn.__code__.co_freevars
    lines = ["def __factory():"]
    lines += [f"    {name} = None" for name in free]
    lines += ["    def trap(*args, **kwargs):"]
    if free:
        lines += [f"        if {GLOBAL} is None:", f"            ({', '.join(free)},)"]
    lines += [f"        {GLOBAL}.hit({dotted!r})", "    return trap"]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<minimoe guard {dotted}>", "exec"), namespace)  # noqa: S102
    code = namespace["__factory"]().__code__
    return code.replace(co_name=fn.__code__.co_name, co_qualname=fn.__code__.co_qualname)


def _attribute_trap(recorder: _Recorder, dotted: str) -> Any:
    def trap(*args: Any, **kwargs: Any) -> Any:
        recorder.hit(dotted)

    return trap


@contextmanager
def guarded(protects: tuple[str, ...] | list[str]) -> Iterator[list[str]]:
    """While inside, calls to the functions named in ``protects`` raise Tripped and are recorded.

    Yields the list of names that were called (filled as it happens).
    """
    recorder = _Recorder()
    hits = recorder.hits
    codes = []  # (function, original code, trap code, name)
    attributes = []  # (holder, attribute, original, had its own, name)
    for dotted in protects:
        holder, attr, obj = resolve(dotted)
        fn = function_of(obj)
        if fn is not None:
            codes.append((fn, fn.__code__, _trap_code(fn, dotted), dotted))
        elif callable(obj):
            own = attr in vars(holder) if isinstance(holder, (type, types.ModuleType)) else True
            attributes.append((holder, attr, obj, own, dotted))
        else:
            raise LookupError(f"{dotted} is a {type(obj).__name__}, not something one calls")
    originals = {original: dotted for _, original, _, dotted in codes}
    keys = {(c.co_filename, c.co_firstlineno, c.co_name): d for c, d in originals.items()}
    builtins = {id(obj): dotted for _, _, obj, _, dotted in attributes}
    methods = {(attr, holder): dotted for holder, attr, _, _, dotted in attributes if isinstance(holder, type)}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            dotted = originals.get(code) or keys.get((code.co_filename, code.co_firstlineno, code.co_name))
            if dotted is not None:
                hits.append(dotted)
        elif event == "c_call":
            dotted = builtins.get(id(arg))
            if dotted is None and methods:
                owner = getattr(arg, "__self__", None)
                for (attr, cls), name in methods.items():
                    if getattr(arg, "__name__", None) == attr and isinstance(owner, cls):
                        dotted = name
                        break
            if dotted is not None:
                hits.append(dotted)

    old_profile = sys.getprofile()
    old_thread_profile = threading.getprofile() if hasattr(threading, "getprofile") else None
    modules = []
    for fn, _, code, _ in codes:
        if GLOBAL not in fn.__globals__:
            fn.__globals__[GLOBAL] = recorder
            modules.append(fn.__globals__)
        fn.__code__ = code
    traps = []
    for holder, attr, _, _, dotted in attributes:
        trap = _attribute_trap(recorder, dotted)
        traps.append(trap)
        setattr(holder, attr, trap)
    active = bool(codes or attributes)
    if active:
        sys.setprofile(profile)
        threading.setprofile(profile)
    try:
        yield hits
    finally:
        if active:
            if sys.getprofile() is not profile:
                hits.append("(the guard's profile hook was removed)")
            sys.setprofile(old_profile)
            threading.setprofile(old_thread_profile)  # type: ignore[arg-type]
        for fn, original, code, dotted in codes:
            if fn.__code__ is not code:
                hits.append(f"{dotted} (its code was changed)")
            fn.__code__ = original
        for g in modules:
            g.pop(GLOBAL, None)
        for (holder, attr, original, own, dotted), trap in zip(attributes, traps):
            current = vars(holder).get(attr) if isinstance(holder, (type, types.ModuleType)) else getattr(holder, attr)
            if current is not trap:
                hits.append(f"{dotted} (it was replaced)")
            if own:
                setattr(holder, attr, original)
            else:
                delattr(holder, attr)
