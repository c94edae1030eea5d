"""``minimoe grade``: run submissions in sandboxed kernels, check them from outside, report.

For each submission the grader reads the file's bytes once (it never writes to it), runs every code
cell in a kernel in its own sandbox (``KernelSession``) under one deadline, then runs the
chapter's checks in its own process, calling the student's functions in the kernel. The chapter
comes from the assignment (``--chapter NN``, or the released notebook's exercise ids), never from
the submission. Maximum points come from the registry. Nothing the notebook prints or writes
counts: the verdicts, the table, ``results.json`` (Gradescope's format) and ``summary.csv`` are
all made here, each written as soon as its submission is graded, into folders named by safe slugs
directly under ``--out``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from minimoe.grading.decode import DecodeError, shared_decoder
from minimoe.grading.feedback import Outcome, cap, run_checks
from minimoe.grading.kernel import CellRun, Deadline, KernelSession, Limits, RemoteStudent
from minimoe.grading.normalize import notebook_with_ids
from minimoe.grading.registry import Exercise, exercises_for_chapter
from minimoe.grading.sandbox import SandboxUnavailable

MAX_NOTEBOOK_BYTES = 100 << 20
MAX_OUTPUT_CHARS = 10_000  # the top-level "output" of results.json
MAX_RESULTS_BYTES = 1 << 20  # a whole results.json
STDOUT_VISIBILITY = "hidden"  # Gradescope: the grader's own stdout is for the instructor


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
    sandbox: str = ""  # how the kernel was isolated ("none (--no-sandbox) ..." when it was not)
    kernel_notes: list[str] = field(default_factory=list)  # limits the kernel ran into
    student_id: str = ""

    @property
    def score(self) -> float:
        return sum(o.points for o in self.outcomes)

    @property
    def max_score(self) -> float:
        return sum(o.max_points for o in self.outcomes)

    @property
    def sandboxed(self) -> bool:
        return not self.sandbox.startswith("none")

    def notes(self) -> str:
        """What went wrong while running the notebook, for the student to read."""
        lines = [self.problem] if self.problem else []
        lines += self.kernel_notes
        for run in self.cells:
            if run.status != "ok":
                lines.append(f"code cell {run.index + 1}: {run.status}" + (f" - {run.detail}" if run.detail else ""))
        return cap("\n".join(lines), MAX_OUTPUT_CHARS)

    def gradescope(self) -> dict:
        """Gradescope's autograder results format (with ``visibility`` per test and ``stdout_visibility``)."""
        report = {
            "score": self.score,
            "max_score": self.max_score,
            "execution_time": round(self.seconds, 1),
            "output": self.notes() or "The notebook ran without errors.",
            "output_format": "text",
            "stdout_visibility": STDOUT_VISIBILITY,
            "tests": [
                {
                    "name": f"{o.exercise}: {o.name}",
                    "score": o.points,
                    "max_score": o.max_points,
                    "status": "passed" if o.passed else "failed",
                    "output": "" if o.passed else cap(f"{o.message}\nHint: {o.hint}"),
                    "visibility": o.visibility,
                }
                for o in self.outcomes
            ],
            "extra_data": {"chapter": self.chapter, "sha256": self.sha256, "sandbox": self.sandbox,
                           "restarts": self.restarts},
        }
        if not self.sandboxed:
            report["output"] = "[graded without a sandbox]\n" + report["output"]
        return report


def chapter_of_release(path: str | Path) -> str:
    """The chapter of a released exercise notebook (the instructor's file), from its ``check()`` ids."""
    nb = nbformat.read(str(path), as_version=4)
    found = set()
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            found.update(re.findall(r"""check\(\s*["'](\d\d)\.""", str(cell.get("source", ""))))
    if len(found) != 1:
        raise GradingError(f"{path}: cannot tell its chapter from its checks (found {sorted(found) or 'none'})")
    return found.pop()


def resolve_chapter(spec: str | None) -> str:
    """``--chapter``: "NN", or the path of the released exercise notebook."""
    if spec is None:
        raise GradingError("say which assignment this is: --chapter NN, or --chapter exercises/NN_name.ipynb "
                           "(the chapter never comes from a submission)")
    spec = str(spec)
    if re.fullmatch(r"\d\d", spec):
        chapter = spec
    elif spec.endswith(".ipynb") and Path(spec).is_file():
        chapter = chapter_of_release(spec)
    else:
        raise GradingError(f"--chapter: got {spec!r}, need NN (such as 05) or a released exercise notebook")
    if not exercises_for_chapter(chapter):
        raise GradingError(f"chapter {chapter} has no exercises to grade")
    return chapter


def _zero(exercises: list[Exercise], why: str) -> list[Outcome]:
    return [Outcome(ex.id, c.name, 0.0, c.points, why, c.hint, c.visibility, c.hidden)
            for ex in exercises for c in ex.checks]


def read_submission(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The submission's bytes: a regular file (a FIFO would block), read once, at most ``max_bytes`` + 1."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise GradingError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise GradingError(f"cannot read {path}: not a regular file")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_notebook(data: bytes, max_bytes: int = MAX_NOTEBOOK_BYTES) -> tuple[nbformat.NotebookNode | None, str]:
    """(notebook, "") or (None, why it is not one). Cell ids are normalised on this copy only."""
    if len(data) > max_bytes:
        return None, f"the file is larger than {max_bytes >> 20} MB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nb = notebook_with_ids(data.decode("utf-8"))  # cell ids filled in: no nbformat warnings
            if not isinstance(nb.get("cells"), list):
                raise ValueError("it has no list of cells")
        return nb, ""
    except Exception as e:  # noqa: BLE001 - any unreadable file is the submission's problem
        return None, f"the file is not a readable notebook ({type(e).__name__}: {str(e)[:200]})"


def grade_notebook(path: str | Path, limits: Limits | None = None, chapter: str | None = None,
                   sandbox: bool = True) -> SubmissionResult:
    """Grade one submission against ``chapter`` ("NN" or a released notebook's path).

    Raises GradingError only when the grader cannot do its job (no chapter, no sandbox, no kernel).
    """
    path = Path(path)
    limits = limits or Limits()
    chapter = resolve_chapter(chapter)
    exercises = exercises_for_chapter(chapter)
    try:
        shared_decoder().warm()  # the grader's own start-up is not the submission's time
    except DecodeError as e:
        raise GradingError(f"the answer decoder does not work here: {e}") from None
    deadline = Deadline(limits.timeout)
    start = time.monotonic()
    data = read_submission(path)
    digest = hashlib.sha256(data).digest()
    nb, problem = parse_notebook(data)
    if nb is None:
        return SubmissionResult(path, chapter, _zero(exercises, problem), [], problem,
                                time.monotonic() - start, digest.hex(), sandbox=_describe(sandbox))

    folder = Path(tempfile.mkdtemp(prefix="minimoe-grade-"))
    try:
        try:
            session = KernelSession(folder, limits, sandbox=sandbox, deadline=deadline)
        except SandboxUnavailable as e:
            raise GradingError(f"the sandbox cannot run here ({e}); grade with --no-sandbox only if the "
                               "submissions are isolated some other way") from None
        try:
            try:
                session.start()
            except Exception as e:  # noqa: BLE001 - before any student code ran: the grader's problem
                raise GradingError(f"could not start a kernel: {type(e).__name__}: {e}") from None
            cells = session.run_notebook(nb.cells)
            student = RemoteStudent(session)
            outcomes = [o for ex in exercises for o in run_checks(ex, student, key=digest)]
        finally:
            session.close()
        return SubmissionResult(path, chapter, outcomes, cells, problem, time.monotonic() - start, digest.hex(),
                                session.restarts, session.sandbox.describe(), list(session.notes))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _describe(sandbox: bool) -> str:
    return "bubblewrap" if sandbox else "none (--no-sandbox)"


# --- reports -------------------------------------------------------------------------------------

def _pts(x: float) -> str:
    return f"{x:g}"


def format_result(result: SubmissionResult) -> str:
    lines = [f"{result.path}  (chapter {result.chapter}): {_pts(result.score)}/{_pts(result.max_score)} points"
             + ("" if result.sandboxed else "  [NOT SANDBOXED]")]
    width = max((len(f"{o.exercise} {o.name}") for o in result.outcomes), default=10)
    for o in result.outcomes:
        mark = "✓" if o.passed else "✗"
        label = f"{o.exercise} {o.name}" + (" (hidden)" if o.hidden else "")
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
    lines = [f"{'submission':<{width}}  {'score':>9}  {'checks passed':>13}  {'seconds':>7}  sandbox"]
    for r in results:
        passed = sum(o.passed for o in r.outcomes)
        score = f"{_pts(r.score)}/{_pts(r.max_score)}"
        lines.append(f"{str(r.path):<{width}}  {score:>9}  {f'{passed}/{len(r.outcomes)}':>13}  {r.seconds:>7.1f}  "
                     + ("yes" if r.sandboxed else "NO (--no-sandbox)"))
    return "\n".join(lines)


_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
RESERVED = {"summary.csv"}


def slug(text: str, max_len: int = 100) -> str:
    """A folder name made of letters, digits, ``_``, ``-`` and inner dots, never empty, never dots alone."""
    s = _SLUG_BAD.sub("_", text).strip(".")
    s = re.sub(r"\.{2,}", ".", s)[:max_len].strip(".")
    return s or "submission"


def _slugs(paths: list[Path]) -> list[str]:
    """A distinct folder name per submission: its stem, made unique with its parent folder's name."""
    names: list[str] = []
    taken = set(RESERVED)
    for p in paths:
        base = slug(p.stem)
        if sum(q.stem == p.stem for q in paths) > 1:
            base = slug(f"{p.parent.name}__{p.stem}")
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        names.append(name)
    return names


def student_id(path: Path, pattern: str | None) -> str:
    """The student id in the file's name: the pattern's group ``id``, else its first group, else the stem."""
    if not pattern:
        return path.stem
    m = re.search(pattern, path.name)
    if m is None:
        return ""
    if "id" in m.groupdict():
        return m.group("id") or ""
    return m.group(1) if m.groups() else m.group(0)


def _write_atomic(folder_fd: int, name: str, text: str) -> None:
    """Write ``name`` in the folder ``folder_fd`` through a fresh temporary file, never through a link."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=folder_fd)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder_fd)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


def _csv_cell(value: object) -> str:
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not re.fullmatch(r"-?[\d.]+", text) else text


def results_json(result: SubmissionResult) -> str:
    """``results.json`` text, at most MAX_RESULTS_BYTES (long outputs are cut first)."""
    report = result.gradescope()
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    limit = 2000
    while len(text.encode()) > MAX_RESULTS_BYTES and limit > 50:
        report["output"] = cap(report["output"], limit)
        for t in report["tests"]:
            t["output"] = cap(t["output"], limit // 4)
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        limit //= 2
    return text


class ReportWriter:
    """Writes each submission's report as soon as it is graded, and the summary after each one."""

    def __init__(self, out: str | Path, paths: list[Path], id_pattern: str | None = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._out_fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.paths = [Path(p) for p in paths]
        self.slugs = dict(zip(map(str, self.paths), _slugs(self.paths)))
        self.id_pattern = id_pattern
        self.results: list[SubmissionResult] = []
        self.written: list[Path] = []
        for name in self.slugs.values():  # a report left from an earlier run must not pass for this one
            folder = self._folder(name, create=False)
            if folder is not None:
                try:
                    os.unlink("results.json", dir_fd=folder)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(folder)

    def _folder(self, name: str, create: bool = True) -> int | None:
        """An fd of ``out/name``: a real folder directly under out (a link there is replaced)."""
        assert "/" not in name and name not in (".", "..") and not name.startswith(".")
        try:
            info = os.lstat(name, dir_fd=self._out_fd)
            if not stat.S_ISDIR(info.st_mode):
                if not create:
                    return None
                os.unlink(name, dir_fd=self._out_fd)
                raise FileNotFoundError
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=self._out_fd)
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._out_fd)

    def add(self, result: SubmissionResult) -> list[Path]:
        if not result.student_id:
            result.student_id = student_id(result.path, self.id_pattern)
        self.results.append(result)
        name = self.slugs.get(str(result.path)) or _slugs([result.path])[0]
        folder = self._folder(name)
        try:
            _write_atomic(folder, "results.json", results_json(result))
        finally:
            os.close(folder)
        written = [self.out / name / "results.json"]
        if len(self.paths) > 1 or len(self.results) > 1:
            self._summary()
            written.append(self.out / "summary.csv")
        for p in written:
            if p not in self.written:
                self.written.append(p)
        return written

    def _summary(self) -> None:
        exercise_ids = list(dict.fromkeys(o.exercise for r in self.results for o in r.outcomes))
        buffer = io.StringIO()
        w = csv.writer(buffer)
        w.writerow(["submission", "student_id", "chapter", "score", "max_score", *exercise_ids, "seconds",
                    "sandboxed", "sha256"])
        for r in self.results:
            per = {ex: sum(o.points for o in r.outcomes if o.exercise == ex) for ex in exercise_ids}
            w.writerow([_csv_cell(r.path), _csv_cell(r.student_id), r.chapter, _pts(r.score), _pts(r.max_score),
                        *[_pts(per.get(ex, 0)) for ex in exercise_ids], f"{r.seconds:.1f}",
                        "yes" if r.sandboxed else "no", r.sha256])
        _write_atomic(self._out_fd, "summary.csv", buffer.getvalue())

    def close(self) -> None:
        try:
            os.close(self._out_fd)
        except OSError:
            pass


def write_reports(results: list[SubmissionResult], out: Path, id_pattern: str | None = None) -> list[Path]:
    """``out/<submission>/results.json`` for each, and ``out/summary.csv`` when there are several."""
    writer = ReportWriter(out, [r.path for r in results], id_pattern)
    try:
        for r in results:
            writer.add(r)
        return writer.written
    finally:
        writer.close()
