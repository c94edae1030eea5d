"""Write the student notebooks (``exercises/``) from the solution notebooks (``solutions/``).

In a solution notebook, answer code sits between ``# BEGIN SOLUTION`` and ``# END SOLUTION``
lines. The student version replaces each such block with ``# YOUR CODE HERE`` and a
``raise NotImplementedError(...)`` at the block's indentation, drops every cell tagged
``solution-only`` (a cell that would reveal the answer), and strips all outputs. Cells that
will raise in the student version are tagged ``raises-exception`` so that nbval expects it: a
stub at the top level of a cell, and cells the author tagged ``exercise-raises`` (say, a demo
that calls a function the student has not written yet).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
STUB_MESSAGE = "replace this line with your solution"
DROP_TAG = "solution-only"
AUTHOR_RAISES_TAG = "exercise-raises"
RAISES_TAG = "raises-exception"

_MARKER = re.compile(r"^(?P<indent>[ \t]*)(?P<marker># (BEGIN|END) SOLUTION)\s*$")


class ReleaseError(ValueError):
    """A solution notebook whose markers do not pair up."""


def stub_source(source: str, where: str = "cell") -> tuple[str, bool, bool]:
    """Replace solution blocks in one cell's source.

    Returns ``(new_source, changed, top_level_stub)``; ``top_level_stub`` says that a stub sits at
    indentation 0, so running the cell raises.
    """
    out: list[str] = []
    inside = False
    changed = top_level = False
    for lineno, line in enumerate(source.split("\n"), 1):
        m = _MARKER.match(line)
        if m and m.group("marker") == BEGIN:
            if inside:
                raise ReleaseError(f"{where}, line {lineno}: '{BEGIN}' inside another solution block")
            inside, changed = True, True
            indent = m.group("indent")
            top_level = top_level or indent == ""
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("{STUB_MESSAGE}")')
        elif m and m.group("marker") == END:
            if not inside:
                raise ReleaseError(f"{where}, line {lineno}: '{END}' without '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ReleaseError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return "\n".join(out), changed, top_level


def release_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of one solution notebook (a new object; ``nb`` is untouched)."""
    student = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(student.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if DROP_TAG in tags:
            continue
        if cell.cell_type == "code":
            source, changed, top_level = stub_source(cell.source, f"{name}, cell {index}")
            cell.source = source
            cell.outputs = []
            cell.execution_count = None
            raises = top_level or AUTHOR_RAISES_TAG in tags
            tags = [t for t in tags if t not in (AUTHOR_RAISES_TAG, RAISES_TAG)]
            if raises:
                tags.append(RAISES_TAG)
        elif BEGIN in cell.source:
            raise ReleaseError(f"{name}, cell {index}: solution markers in a {cell.cell_type} cell")
        cell.metadata.pop("execution", None)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
        cells.append(cell)
    student.cells = cells
    return student


def render(nb: nbformat.NotebookNode) -> str:
    """The notebook as the text written to disk (one fixed format, so diffs stay small)."""
    return nbformat.writes(nb) + "\n"


def release(solutions: str | Path = "solutions", exercises: str | Path = "exercises",
            check_only: bool = False) -> list[Path]:
    """Write ``exercises/NAME.ipynb`` for every ``solutions/NAME.ipynb``.

    With ``check_only`` nothing is written; the returned list names the exercise files that are
    missing or differ from what release would write (and stale ones with no solution).
    """
    solutions, exercises = Path(solutions), Path(exercises)
    if not solutions.is_dir():
        raise ValueError(f"solutions: {solutions} is not a folder")
    differing: list[Path] = []
    wanted = set()
    for src in sorted(solutions.glob("*.ipynb")):
        dst = exercises / src.name
        wanted.add(dst.name)
        text = render(release_notebook(nbformat.read(src, as_version=4), src.name))
        if dst.exists() and dst.read_text(encoding="utf-8") == text:
            continue
        differing.append(dst)
        if not check_only:
            exercises.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".ipynb.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(dst)
    if exercises.is_dir():
        stale = [p for p in sorted(exercises.glob("*.ipynb")) if p.name not in wanted]
        differing.extend(stale)
        if not check_only:
            for p in stale:
                p.unlink()
    return differing
