"""``minimoe grade``: run submissions in isolated kernels, check them from outside, report.

For each submission the grader reads the file's bytes once (it never writes to it), copies them
into a temporary folder, runs every code cell in a sandboxed kernel (``KernelSession``), then
runs the chapter's checks in its own process, calling the student's functions in the kernel.
Maximum points come from the registry. Nothing the notebook prints or writes counts: the verdicts,
the table, ``results.json`` (Gradescope's format) and ``summary.csv`` are all made here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from minimoe.grading.feedback import Outcome, run_checks
from minimoe.grading.kernel import CellRun, KernelSession, Limits, RemoteStudent
from minimoe.grading.normalize import notebook_with_ids
from minimoe.grading.registry import Exercise, exercises_for_chapter


class GradingError(RuntimeError):
    """The grader itself could not grade (as opposed to a submission that earns no points)."""


@dataclass
class SubmissionResult:
    path: Path
    chapter: str
    outcomes: list[Outcome]
    cells: list[CellRun] = field(default_factory=list)
    problem: str = ""  # why the notebook could not run at all, if it could not
    seconds: float = 0.0
    sha256: str = ""
    restarts: int = 0  # how often the kernel had to be started again

    @property
    def score(self) -> float:
        return sum(o.points for o in self.outcomes)

    @property
    def max_score(self) -> float:
        return sum(o.max_points for o in self.outcomes)

    def notes(self) -> str:
        """What went wrong while running the notebook, for the student to read."""
        lines = [self.problem] if self.problem else []
        for run in self.cells:
            if run.status != "ok":
                lines.append(f"code cell {run.index + 1}: {run.status}" + (f" - {run.detail}" if run.detail else ""))
        return "\n".join(lines)

    def gradescope(self) -> dict:
        """Gradescope's autograder results format."""
        return {
            "score": self.score,
            "max_score": self.max_score,
            "execution_time": round(self.seconds, 1),
            "output": self.notes() or "The notebook ran without errors.",
            "tests": [
                {
                    "name": f"{o.exercise}: {o.name}",
                    "score": o.points,
                    "max_score": o.max_points,
                    "status": "passed" if o.passed else "failed",
                    "output": "" if o.passed else f"{o.message}\nHint: {o.hint}",
                }
                for o in self.outcomes
            ],
        }


_CHAPTER_IN_NAME = re.compile(r"^(\d\d)_")
_CHAPTER_IN_CHECK = re.compile(r"""check\(\s*["'](\d\d)\.""")


def infer_chapter(path: Path, nb: nbformat.NotebookNode | None) -> str | None:
    """The chapter a submission belongs to: its file name (``00_...``), else its own metadata or checks."""
    m = _CHAPTER_IN_NAME.match(path.name)
    if m:
        return m.group(1)
    if nb is not None:
        meta = nb.metadata.get("minimoe", {})
        if isinstance(meta, dict) and re.fullmatch(r"\d\d", str(meta.get("chapter", ""))):
            return str(meta["chapter"])
        for cell in nb.cells:
            m = _CHAPTER_IN_CHECK.search(str(cell.get("source", "")))
            if m:
                return m.group(1)
    return None


def _zero(exercises: list[Exercise], why: str) -> list[Outcome]:
    return [Outcome(ex.id, c.name, 0.0, c.points, why, c.hint) for ex in exercises for c in ex.checks]


def grade_notebook(path: str | Path, limits: Limits | None = None, chapter: str | None = None) -> SubmissionResult:
    """Grade one submission. Raises GradingError only when the grader cannot do its job."""
    path = Path(path)
    limits = limits or Limits()
    start = time.monotonic()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GradingError(f"cannot read {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    nb, problem = None, ""
    try:
        nb = notebook_with_ids(data.decode("utf-8"))  # cell ids filled in: no nbformat warnings
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no list of cells")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the submission's problem
        nb, problem = None, f"the file is not a readable notebook ({type(e).__name__}: {str(e)[:200]})"
    chapter = chapter or infer_chapter(path, nb)
    if chapter is None:
        raise GradingError(f"{path}: cannot tell which chapter this is; name it NN_*.ipynb or pass --chapter NN")
    exercises = exercises_for_chapter(chapter)
    if not exercises:
        raise GradingError(f"{path}: chapter {chapter} has no exercises to grade")
    if nb is None:
        return SubmissionResult(path, chapter, _zero(exercises, problem), [], problem,
                                time.monotonic() - start, digest)

    with tempfile.TemporaryDirectory(prefix="minimoe-grade-") as tmp:
        (Path(tmp) / "submission.ipynb").write_bytes(data)
        session = KernelSession(Path(tmp), limits)
        try:
            try:
                session.start()
            except Exception as e:  # noqa: BLE001
                raise GradingError(f"could not start a kernel: {type(e).__name__}: {e}") from None
            cells = session.run_notebook(nb.cells)
            student = RemoteStudent(session)
            outcomes = [o for ex in exercises for o in run_checks(ex, student)]
        finally:
            session.close()
    return SubmissionResult(path, chapter, outcomes, cells, problem, time.monotonic() - start, digest,
                            session.restarts)


# --- reports -------------------------------------------------------------------------------------

def _pts(x: float) -> str:
    return f"{x:g}"


def format_result(result: SubmissionResult) -> str:
    lines = [f"{result.path}  (chapter {result.chapter}): {_pts(result.score)}/{_pts(result.max_score)} points"]
    width = max((len(f"{o.exercise} {o.name}") for o in result.outcomes), default=10)
    for o in result.outcomes:
        mark = "✓" if o.passed else "✗"
        label = f"{o.exercise} {o.name}"
        lines.append(f"  {mark} {label:<{width}}  {_pts(o.points):>3}/{_pts(o.max_points)}")
        if not o.passed:
            lines.append(f"      {o.message}")
    notes = result.notes()
    if notes:
        lines.append("  while running the notebook:")
        lines.extend(f"    {line}" for line in notes.splitlines())
    return "\n".join(lines)


def format_summary(results: list[SubmissionResult]) -> str:
    width = max(len(str(r.path)) for r in results)
    lines = [f"{'submission':<{width}}  {'score':>9}  {'checks passed':>13}  {'seconds':>7}"]
    for r in results:
        passed = sum(o.passed for o in r.outcomes)
        score = f"{_pts(r.score)}/{_pts(r.max_score)}"
        lines.append(f"{str(r.path):<{width}}  {score:>9}  {f'{passed}/{len(r.outcomes)}':>13}  {r.seconds:>7.1f}")
    return "\n".join(lines)


def _slugs(paths: list[Path]) -> list[str]:
    """A distinct folder name per submission: its stem, made unique with its parent folder's name."""
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem)
        if sum(q.stem == p.stem for q in paths) > 1:
            base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{p.parent.name}__{p.stem}")
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_reports(results: list[SubmissionResult], out: Path) -> list[Path]:
    """``out/<submission>/results.json`` for each, and ``out/summary.csv`` when there are several."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for result, slug in zip(results, _slugs([r.path for r in results])):
        folder = out / slug
        folder.mkdir(exist_ok=True)
        target = folder / "results.json"
        _write_atomic(target, json.dumps(result.gradescope(), indent=2, ensure_ascii=False) + "\n")
        written.append(target)
    if len(results) > 1:
        exercise_ids = list(dict.fromkeys(o.exercise for r in results for o in r.outcomes))
        target = out / "summary.csv"
        tmp = target.with_name("summary.csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["submission", "chapter", "score", "max_score", *exercise_ids, "seconds", "sha256"])
            for r in results:
                per = {ex: sum(o.points for o in r.outcomes if o.exercise == ex) for ex in exercise_ids}
                w.writerow([str(r.path), r.chapter, _pts(r.score), _pts(r.max_score),
                            *[_pts(per[ex]) for ex in exercise_ids], f"{r.seconds:.1f}", r.sha256])
        tmp.replace(target)
        written.append(target)
    return written
