"""Running an exercise's checks and reporting them: ✓/✗ per check, its hint, the points."""

from __future__ import annotations

import secrets
import traceback
from dataclasses import dataclass

import torch

from minimoe.grading.registry import Exercise, Student, StudentError, get_exercise


@dataclass(frozen=True)
class Outcome:
    exercise: str
    name: str
    points: float
    max_points: float
    message: str  # empty when the check passed
    hint: str

    @property
    def passed(self) -> bool:
        return self.points == self.max_points


def run_checks(ex: Exercise, student: Student, seed: int | None = None) -> list[Outcome]:
    """Run every check of ``ex``; a failing check costs only its own points.

    Each check gets a generator seeded afresh (a random seed unless ``seed`` is given), so a
    hard-coded answer for one input does not pass.
    """
    outcomes = []
    for i, chk in enumerate(ex.checks):
        rng = torch.Generator().manual_seed(secrets.randbits(62) if seed is None else seed + i)
        try:
            chk.run(student, rng)
        except StudentError as e:
            outcomes.append(Outcome(ex.id, chk.name, 0.0, chk.points, str(e), chk.hint))
        except AssertionError as e:
            outcomes.append(Outcome(ex.id, chk.name, 0.0, chk.points, str(e) or "wrong answer", chk.hint))
        except Exception as e:  # noqa: BLE001 - a check that breaks must not break the others
            last = traceback.extract_tb(e.__traceback__)[-1]
            outcomes.append(Outcome(ex.id, chk.name, 0.0, chk.points,
                                    f"the check could not run ({type(e).__name__}: {e} at line {last.lineno})",
                                    chk.hint))
        else:
            outcomes.append(Outcome(ex.id, chk.name, chk.points, chk.points, "", chk.hint))
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
    got = sum(o.points for o in outcomes)
    lines.append(f"  {_fmt(got)}/{_fmt(ex.max_points)} points"
                 + (" - all checks pass" if got == ex.max_points else ""))
    return "\n".join(lines)


class CheckReport:
    """What ``check()`` returns: printed as text, and inspectable (``.score``, ``.passed``)."""

    def __init__(self, ex: Exercise, outcomes: list[Outcome]):
        self.exercise = ex
        self.outcomes = outcomes
        self.score = sum(o.points for o in outcomes)
        self.max_score = ex.max_points
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
    runs the same checks, from outside your notebook.
    """
    from minimoe.grading.student import LocalStudent

    if not isinstance(exercise_id, str):
        raise TypeError(f"exercise_id: got {type(exercise_id).__name__}, need a str such as '00.warmup'")
    ex = get_exercise(exercise_id)
    report = CheckReport(ex, run_checks(ex, LocalStudent(namespace)))
    if not quiet:
        print(report)
        report._just_printed = True
    return report
