"""Every chapter's solution earns full marks from the grader in its sandbox, and its untouched exercise earns 0."""

from pathlib import Path

import pytest

from minimoe.grading import exercises_for_chapter
from minimoe.grading.grader import grade_notebook
from minimoe.grading.kernel import Limits

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LIMITS = Limits(timeout=300, cell_timeout=120, memory_gb=4)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_full_marks_exercise_zero(solution):
    chapter = solution.name[:2]
    expected = sum(ex.max_points for ex in exercises_for_chapter(chapter))
    assert expected > 0, f"chapter {chapter} has a solution notebook but no checks"
    full = grade_notebook(solution, LIMITS, chapter=chapter)
    failed = [f"{o.exercise} {o.name}: {o.message}" for o in full.outcomes if not o.passed]
    assert not failed and full.score == full.max_score == expected, failed
    assert not full.notes(), full.notes()  # the solution runs without errors
    assert full.sandboxed and full.sandbox.startswith("bubblewrap"), full.sandbox
    empty = grade_notebook(ROOT / "exercises" / solution.name, LIMITS, chapter=chapter)
    assert empty.score == 0 and empty.max_score == expected
