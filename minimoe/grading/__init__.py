"""Exercises and grading: the checks registry, ``check()`` for instant feedback, and the grader.

In a notebook::

    from minimoe.grading import check
    check("00.softmax")

From the command line, ``minimoe grade`` runs each submission in an isolated kernel and the same
checks in its own process (see ``minimoe.grading.grader``). ``minimoe.grading.release`` writes the
student notebooks in ``exercises/`` from ``solutions/``.
"""

from minimoe.grading.feedback import CheckReport, Outcome, check, run_checks
from minimoe.grading.registry import (
    REGISTRY,
    Check,
    Exercise,
    StudentError,
    exercise,
    exercises_for_chapter,
    get_exercise,
)

__all__ = [
    "REGISTRY", "Check", "CheckReport", "Exercise", "Outcome", "StudentError",
    "check", "exercise", "exercises_for_chapter", "get_exercise", "run_checks",
]
