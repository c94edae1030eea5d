"""Exercises and grading: the checks registry, ``check()`` for instant feedback, and the grader.

In a notebook::

    from minimoe.grading import check
    check("00.softmax")

From the command line, ``minimoe grade`` runs each submission in a kernel in its own sandbox
(``minimoe.grading.sandbox``, ``minimoe.grading.kernel``) and the same checks in its own process
(``minimoe.grading.grader``), decoding what the kernel answers in a throwaway child
(``minimoe.grading.decode``) and guarding the answer key (``minimoe.grading.guard``);
``minimoe.grading.gradescope`` makes and runs the Gradescope autograder. ``minimoe.grading.release``
writes the student notebooks in ``exercises/`` from ``solutions/``.
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
