"""The one registry of exercise checks, keyed by exercise id ("00.warmup").

An exercise names the functions a student writes; each of its checks has a name, points and a
hint, and a body ``run(student, rng)`` that calls the student's functions through ``student``
(an adapter: in a notebook it calls them directly, in ``minimoe grade`` it sends the inputs to
the student's kernel) and compares the answers with its own reference, raising
``AssertionError`` with a message when they differ. The grader takes maximum points from here,
never from the student's notebook.

A check is *visible* (it runs in the notebook's ``check()`` and in ``minimoe grade``) or *hidden*
(``hidden=True``: instructor-only, run by ``minimoe grade`` alone); its ``visibility`` is the
Gradescope field its result carries. An exercise may name the package functions that compute its
answer (``protects=``): while a check runs the student's function, calling one of them fails the
check (``minimoe.grading.guard``).
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch


class Student(Protocol):
    """How a check reaches the student's code. Results are plain tensors, numbers and containers.

    ``call_on_ranks`` runs the student's function on ``world`` CPU processes joined by gloo
    (``minimoe.parallel.call_on_ranks``: forked from wherever the function lives, the notebook's
    kernel in ``minimoe grade``), rank r with ``args_per_rank[r]``; it returns every rank's result.
    ``launch`` runs a student's ``@triton.jit`` kernel itself, on the check's grid and arguments,
    and returns every argument after the launch (the tensors the kernel wrote into): the check
    exercises the kernel, not a Python wrapper the student could write around it.
    """

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any: ...

    def value(self, name: str) -> Any: ...

    def call_on_ranks(self, name: str, world: int, args_per_rank: list, driver: str = "call") -> list: ...
    def launch(self, name: str, grid: tuple[int, ...], *args: Any, **meta: Any) -> list: ...


class StudentError(Exception):
    """The student's code could not give an answer: it raised, hung, died or returned junk."""


CheckBody = Callable[[Student, torch.Generator], None]


VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's values


@dataclass(frozen=True)
class Check:
    name: str
    points: float
    hint: str
    run: CheckBody
    hidden: bool = False  # instructor-only: minimoe grade runs it, the notebook's check() does not
    visibility: str = "visible"  # what Gradescope shows the student


@dataclass
class Exercise:
    id: str
    title: str
    functions: tuple[str, ...]
    checks: list[Check] = field(default_factory=list)
    protects: tuple[str, ...] = ()  # package functions that compute this exercise's answer

    @property
    def chapter(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.checks)

    def visible_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.hidden]

    def check(self, name: str, points: float, hint: str, hidden: bool = False,
              visibility: str | None = None) -> Callable[[CheckBody], CheckBody]:
        """Decorator: register ``body`` as one check of this exercise.

        ``hidden=True`` makes an instructor-only check (graded, never run by ``check()``), shown on
        Gradescope once grades are published unless ``visibility`` says otherwise.
        """
        if not isinstance(points, (int, float)) or points <= 0:
            raise ValueError(f"points: got {points!r}, need a positive number")
        if not hint:
            raise ValueError(f"hint: check {name!r} needs a hint")
        if visibility is None:
            visibility = "after_published" if hidden else "visible"
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility: got {visibility!r}, need one of {', '.join(VISIBILITIES)}")

        def register(body: CheckBody) -> CheckBody:
            if any(c.name == name for c in self.checks):
                raise ValueError(f"exercise {self.id}: a check named {name!r} exists already")
            self.checks.append(Check(name, float(points), hint, body, bool(hidden), visibility))
            return body

        return register


REGISTRY: dict[str, Exercise] = {}

_ID = re.compile(r"^\d\d\.[a-z0-9_]+$")


def exercise(id: str, title: str, functions: tuple[str, ...] | list[str] = (),
             protects: tuple[str, ...] | list[str] = ()) -> Exercise:
    """Create and register an exercise. ``id`` is ``"NN.name"`` with NN its chapter.

    ``protects`` names (``"minimoe.moe.switch_aux_loss"``) the functions that compute the answer (the
    package's reference; a torch builtin where the exercise is to write it): a student's function
    that calls one of them while a check runs it fails that check.
    """
    if not isinstance(id, str) or not _ID.match(id):
        raise ValueError(f"id: got {id!r}, need 'NN.name' such as '00.warmup'")
    if id in REGISTRY:
        raise ValueError(f"id: exercise {id!r} is registered already")
    if isinstance(protects, str) or not all(isinstance(p, str) and re.fullmatch(r"\w+(\.\w+)+", p) for p in protects):
        raise ValueError(f"protects: got {protects!r}, need dotted names of functions such as "
                         "('minimoe.moe.switch_aux_loss',)")
    ex = Exercise(id, title, tuple(functions), protects=tuple(protects))
    REGISTRY[id] = ex
    return ex


def _load_checks() -> None:
    from minimoe.grading import checks  # noqa: F401  (registers every chapter's exercises)


def get_exercise(id: str) -> Exercise:
    _load_checks()
    if id not in REGISTRY:
        raise KeyError(f"no exercise {id!r}; known: {', '.join(sorted(REGISTRY)) or 'none'}")
    return REGISTRY[id]


def exercises_for_chapter(chapter: str) -> list[Exercise]:
    """Every exercise of a chapter (``"00"``), in registry order."""
    _load_checks()
    return [ex for ex in REGISTRY.values() if ex.chapter == chapter]


# --- helpers that checks share -----------------------------------------------------------------

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    # (rtol, atol), as torch.testing.assert_close uses by default, stated here once.
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}


_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def short(value: Any) -> str:
    """A repr of ``value`` at most a few hundred characters long, whatever the student returned."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return _REPR.repr(value)[:300]


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def expect_close(got: Any, want: torch.Tensor, what: str) -> None:
    """Assert that ``got`` is a tensor of ``want``'s shape whose values match within TOLERANCES."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
    if not got.dtype.is_floating_point and want.dtype.is_floating_point:
        raise AssertionError(f"{what}: expected a floating-point tensor, got {got.dtype}")
    if got.is_complex() != want.is_complex():
        raise AssertionError(f"{what}: expected a {want.dtype} tensor, got {got.dtype}")
    rtol, atol = TOLERANCES.get(want.dtype, (1e-5, 1e-8))
    got = got.to(want.dtype)
    if not bool(torch.isfinite(got).all()):
        raise AssertionError(f"{what}: the result has NaN or inf where the answer is finite")
    # Written so that a NaN anywhere makes it false.
    if not bool(((got - want).abs() <= atol + rtol * want.abs()).all()):
        err = (got - want).abs().max().item()
        raise AssertionError(f"{what}: values differ (max |difference| {err:.3g}, rtol {rtol}, atol {atol})")


def expect_equal(got: Any, want: Any, what: str) -> None:
    """Assert exact equality of plain numbers (``bool`` never passes for an ``int``; NaN never passes)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not isinstance(want, torch.Tensor):
        got = got.item()
    if isinstance(got, float) and not math.isfinite(got):
        raise AssertionError(f"{what}: expected {short(want)}, got {got!r}")
    if isinstance(got, bool) != isinstance(want, bool):
        raise AssertionError(f"{what}: expected {short(want)}, got {short(got)}")
    try:
        same = bool(got == want)
    except Exception:  # noqa: BLE001 - tensors of another shape, say
        same = False
    if not same or _has_nan(got):
        raise AssertionError(f"{what}: expected {short(want)}, got {short(got)}")


def _has_nan(x: Any) -> bool:
    """NaN anywhere in a (nested) list or tuple of numbers."""
    stack, seen = [x], 0
    while stack and seen < 100_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, float) and item != item:
            return True
        if isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def expect_tuple(got: Any, n: int, shape: str) -> tuple:
    """Assert that a student function returned ``n`` values; ``shape`` names them, e.g. "f should return (a, b)"."""
    if not isinstance(got, (tuple, list)) or len(got) != n:
        kind = f"{type(got).__name__} of length {len(got)}" if isinstance(got, (tuple, list)) else type(got).__name__
        raise AssertionError(f"{shape}, got a {kind}")
    return tuple(got)


def expect_number(got: Any, want: float, what: str, rel: float = 1e-6) -> None:
    """Assert that ``got`` is a finite number (or a one-element tensor) within ``rel`` of ``want``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{what}: expected a number, got {type(got).__name__}")
    if not _finite(got):
        raise AssertionError(f"{what}: expected a finite number, got {got!r}")
    # Written so that it is false for NaN, whatever slips through.
    if not abs(got - want) <= rel * abs(want):
        raise AssertionError(f"{what}: off by a factor of {got / want:.4g}" if want and got else f"{what}: wrong")
