"""Build adversarial submissions from the chapter-00 solution and grade them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nbformat
from nbformat.v4 import new_code_cell

from minimoe.grading.grader import SubmissionResult, grade_notebook
from minimoe.grading.kernel import Limits

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "00_setup_and_tour.ipynb"
EXERCISE = ROOT / "exercises" / "00_setup_and_tour.ipynb"
FULL = {"00.linear_params": 2.0, "00.softmax": 4.0}
FAST = Limits(timeout=120, cell_timeout=20, memory_gb=3)


def code_index(nb: nbformat.NotebookNode, starts: str) -> int:
    """Index (among all cells) of the code cell whose source starts with ``starts``."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.lstrip().startswith(starts):
            return i
    raise LookupError(starts)


def make(tmp_path: Path, name: str, edit: Callable[[nbformat.NotebookNode], None] | None = None,
         base: Path = SOLUTION) -> Path:
    nb = nbformat.read(base, as_version=4)
    if edit is not None:
        edit(nb)
    path = tmp_path / f"00_{name}.ipynb"
    nbformat.write(nb, path)
    return path


def insert_after(starts: str, source: str) -> Callable[[nbformat.NotebookNode], None]:
    def edit(nb):
        nb.cells.insert(code_index(nb, starts) + 1, new_code_cell(source))
    return edit


def replace_cell(starts: str, source: str) -> Callable[[nbformat.NotebookNode], None]:
    def edit(nb):
        nb.cells[code_index(nb, starts)] = new_code_cell(source)
    return edit


def grade(path: Path, limits: Limits = FAST) -> tuple[dict[str, float], SubmissionResult]:
    """Grade, check that the submitted bytes did not change, return points per exercise."""
    before = path.read_bytes()
    result = grade_notebook(path, limits, chapter="00")
    assert path.read_bytes() == before, "the grader modified the submitted file"
    assert result.max_score == sum(FULL.values()), "maximum points must come from the registry"
    points: dict[str, float] = {}
    for o in result.outcomes:
        points[o.exercise] = points.get(o.exercise, 0.0) + o.points
    return points, result


def messages(result: SubmissionResult, exercise: str) -> str:
    return "\n".join(o.message for o in result.outcomes if o.exercise == exercise)


def processes_with(token: str) -> list[int]:
    """Pids of the processes whose command line holds ``token``."""
    import os

    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found
