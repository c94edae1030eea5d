"""Running an exercise's checks and reporting them: ✓/✗ per check, its hint, the points."""

from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from minimoe.grading.registry import Check, Exercise, Student, StudentError, get_exercise

MESSAGE_CHARS = 1000  # the longest message a check's result carries


@dataclass(frozen=True)
class Outcome:
    exercise: str
    name: str
    points: float
    max_points: float
    message: str  # empty when the check passed
    hint: str
    visibility: str = "visible"  # Gradescope's field
    hidden: bool = False  # an instructor-only check

    @property
    def passed(self) -> bool:
        return self.points == self.max_points


def check_seed(key: bytes, exercise_id: str, check_name: str) -> int:
    """The seed of one check's random inputs: a hash of ``key`` (the submission) and the check's id."""
    digest = hashlib.sha256(b"minimoe-check\0" + key + b"\0" + f"{exercise_id}\0{check_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def cap(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " ... (cut short)"


def _bound(student: Any, ex: Exercise, chk: Check) -> Any:
    """The adapter for one check: it knows which exercise it serves (to guard its references)."""
    for_check = getattr(student, "for_check", None)
    return for_check(ex, chk) if callable(for_check) else student


def run_checks(ex: Exercise, student: Student, seed: int | None = None, *, key: bytes | None = None,
               include_hidden: bool = True) -> list[Outcome]:
    """Run the checks of ``ex``; a failing check costs only its own points.

    Each check's random inputs come from a generator seeded by ``key`` (the submission's content;
    the grader passes its SHA-256) and the check's id, so a regrade gives the same verdicts and a
    hard-coded answer for one input does not pass. ``seed`` gives check i the seed ``seed + i``
    instead. Hidden checks run only with ``include_hidden``.
    """
    outcomes = []
    for i, chk in enumerate(ex.checks):
        if chk.hidden and not include_hidden:
            continue
        value = seed + i if seed is not None else check_seed(key or b"", ex.id, chk.name)
        rng = torch.Generator().manual_seed(value)
        fail = lambda message: Outcome(ex.id, chk.name, 0.0, chk.points, cap(message), chk.hint,  # noqa: E731
                                       chk.visibility, chk.hidden)
        try:
            chk.run(_bound(student, ex, chk), rng)
        except StudentError as e:
            outcomes.append(fail(str(e)))
        except AssertionError as e:
            outcomes.append(fail(str(e) or "wrong answer"))
        except Exception as e:  # noqa: BLE001 - a check that breaks must not break the others
            last = traceback.extract_tb(e.__traceback__)[-1]
            outcomes.append(fail(f"the check could not run ({type(e).__name__}: {cap(str(e), 300)} at line {last.lineno})"))
        else:
            outcomes.append(Outcome(ex.id, chk.name, chk.points, chk.points, "", chk.hint, chk.visibility, chk.hidden))
    return outcomes


def _fmt(x: float) -> str:
    return f"{x:g}"


def format_outcomes(ex: Exercise, outcomes: list[Outcome]) -> str:
    lines = [f"{ex.id}: {ex.title}"]
    for o in outcomes:
        mark = "✓" if o.passed else "✗"
        lines.append(f"  {mark} {o.name} ({_fmt(o.points)}/{_fmt(o.max_points)})")
        if not o.passed:
            lines.append(f"      what happened: {o.message}")
            lines.append(f"      hint: {o.hint}")
    got, most = sum(o.points for o in outcomes), sum(o.max_points for o in outcomes)
    lines.append(f"  {_fmt(got)}/{_fmt(most)} points" + (" - all checks pass" if got == most else ""))
    return "\n".join(lines)


class CheckReport:
    """What ``check()`` returns: printed as text, and inspectable (``.score``, ``.passed``)."""

    def __init__(self, ex: Exercise, outcomes: list[Outcome]):
        self.exercise = ex
        self.outcomes = outcomes
        self.score = sum(o.points for o in outcomes)
        self.max_score = sum(o.max_points for o in outcomes)
        self.passed = self.score == self.max_score
        self._just_printed = False

    def _ipython_display_(self) -> None:
        # check() has just printed the report; showing it again as the cell's value is noise.
        if self._just_printed:
            self._just_printed = False
        else:
            print(self)

    def __str__(self) -> str:
        return format_outcomes(self.exercise, self.outcomes)

    def __repr__(self) -> str:
        return f"<CheckReport {self.exercise.id}: {_fmt(self.score)}/{_fmt(self.max_score)}>"


def check(exercise_id: str, namespace: dict | None = None, quiet: bool = False) -> CheckReport:
    """Check your answers to one exercise, right here in the notebook.

    Prints ✓ or ✗ for each check with a hint where it fails, and returns the report. The
    functions are looked up in the notebook's namespace (or ``namespace``). ``minimoe grade``
    runs the same checks, from outside your notebook, and may run more that only the grader sees.
    The random inputs depend on your functions' code, so checking the same code twice gives the
    same result.
    """
    from minimoe.grading.student import LocalStudent

    if not isinstance(exercise_id, str):
        raise TypeError(f"exercise_id: got {type(exercise_id).__name__}, need a str such as '00.warmup'")
    ex = get_exercise(exercise_id)
    student = LocalStudent(namespace)
    report = CheckReport(ex, run_checks(ex, student, key=student.fingerprint(ex.functions), include_hidden=False))
    if not quiet:
        print(report)
        report._just_printed = True
    return report
