"""Run attack notebooks through ``minimoe grade`` and check that the grader held.

An attack test builds reproducer notebooks (a released or solution notebook with the attack's
cells added), grades them in batches with the ``minimoe grade`` command, each batch in its own
process and several batches at once, and then checks, for every submission:

- the expected verdict (points per exercise);
- the submitted bytes, unchanged;
- no process left: none whose command line holds the test's token, none in the grader's cgroups,
  and no cgroup left behind;
- no file outside the submission's own (temporary) folder changed: the minimoe package, the venv's
  site-packages, every other file of the test (classmates' submissions, a planted secret), and the
  output folder holds only the grader's reports;
- the grader alive: exit status 0, a results.json for every submission and summary.csv.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from grading_helpers import ROOT, processes_with
from minimoe.grading.sandbox import package_dir

TOKEN = f"minimoe-attack-{uuid.uuid4().hex}"  # in the command line of every process an attack starts
SECRET = f"grader-secret-{uuid.uuid4().hex}"  # in the grader's environment: must never reach feedback
SOLUTION = ROOT / "solutions"
EXERCISES = ROOT / "exercises"


def notebook(chapter_file: str, base: str = "solution") -> nbformat.NotebookNode:
    folder = SOLUTION if base == "solution" else EXERCISES
    return nbformat.read(folder / chapter_file, as_version=4)


def add_cells(nb: nbformat.NotebookNode, *sources: str, after: str | None = None) -> nbformat.NotebookNode:
    """Insert code cells after the first code cell starting with ``after`` (else at the end)."""
    index = len(nb.cells)
    if after is not None:
        index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.lstrip().startswith(after)) + 1
    for offset, source in enumerate(sources):
        nb.cells.insert(index + offset, new_code_cell(source))
    return nb


def tree_state(root: Path, skip: tuple[Path, ...] = (), content: bool = True) -> dict[str, tuple]:
    """Every file under ``root``: (size, mtime, mode, digest or None); folders and links too."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip and d != "__pycache__"]
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            try:
                info = path.lstat()
            except OSError:
                continue
            digest = None
            if content and path.is_file() and not path.is_symlink() and info.st_size < 50 << 20:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, info.st_mode, digest)
        for d in dirnames:
            state[str((here / d).relative_to(root)) + "/"] = ("dir",)
    return state


def site_packages() -> Path:
    return Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)))


@dataclass
class Submission:
    name: str
    path: Path
    expect: dict[str, float] | None  # points per exercise; None: checked by the test itself
    data: bytes = b""


@dataclass
class Batch:
    """Submissions graded together by one ``minimoe grade`` process."""

    root: Path
    name: str
    chapter: str
    args: tuple[str, ...] = ("--timeout", "180", "--cell-timeout", "20", "--memory", "2")
    submissions: list[Submission] = field(default_factory=list)
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    grader_pid: int = 0
    grader_peak_rss: int = 0  # bytes: VmHWM of the grader process alone
    relative: bool = False  # name the submissions relative to the batch's folder, as a teacher might

    def __post_init__(self) -> None:
        self.dir = self.root / self.name
        self.dir.mkdir(parents=True)
        self.out = self.dir / "out"

    def add(self, name: str, nb: nbformat.NotebookNode | bytes, expect: dict[str, float] | None,
            filename: str | None = None) -> Path:
        path = self.dir / (filename or f"{name}.ipynb")
        data = nb if isinstance(nb, bytes) else nbformat.writes(nb).encode()
        path.write_bytes(data)
        self.submissions.append(Submission(name, path, expect, data))
        return path

    def command(self) -> list[str]:
        paths = [s.path.name if self.relative else str(s.path) for s in self.submissions]
        return [sys.executable, "-m", "minimoe.cli", "grade", *paths,
                "--chapter", self.chapter, "--out", str(self.out), *self.args]

    def run(self) -> None:
        env = dict(os.environ, MINIMOE_TEST_SECRET=SECRET, OMP_NUM_THREADS="1")
        start = time.monotonic()
        proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=self.dir)
        self.grader_pid = proc.pid
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.2):
                try:
                    text = Path(f"/proc/{proc.pid}/status").read_text()
                    self.grader_peak_rss = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024
                except (OSError, AttributeError):
                    pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        self.stdout, self.stderr = proc.communicate(timeout=1800)
        stop.set()
        watcher.join()
        self.returncode = proc.returncode
        self.seconds = time.monotonic() - start

    def result(self, name: str) -> dict:
        from minimoe.grading.grader import _slugs

        index = next(i for i, s in enumerate(self.submissions) if s.name == name)
        paths = [Path(s.path.name) if self.relative else s.path for s in self.submissions]
        folder = self.out / _slugs(paths)[index]
        report = folder / "results.json"
        assert report.is_file(), f"no results.json for {name} in {sorted(p.name for p in self.out.iterdir())}"
        return json.loads(report.read_text())

    def points(self, name: str) -> dict[str, float]:
        points: dict[str, float] = {}
        for t in self.result(name)["tests"]:
            exercise = t["name"].split(":", 1)[0]
            points[exercise] = points.get(exercise, 0.0) + t["score"]
        return points

    def text(self, name: str) -> str:
        """Everything the student would read for ``name``: results.json as text."""
        return json.dumps(self.result(name))


def run_all(batches: list[Batch], parallel: int = 3) -> None:
    """Run the batches, ``parallel`` at a time (their grading is mostly waiting on kernels)."""
    pending = list(batches)
    running: list[threading.Thread] = []
    while pending or running:
        running = [t for t in running if t.is_alive()]
        while pending and len(running) < parallel:
            t = threading.Thread(target=pending.pop(0).run)
            t.start()
            running.append(t)
        time.sleep(0.5)


def cgroups_of(pid: int) -> list[Path]:
    """Cgroups the grader ``pid`` made (named ``minimoe-<pid>-...``) that still exist."""
    base = Path("/sys/fs/cgroup")
    return [Path(d) for d, _, _ in os.walk(base) if os.path.basename(d).startswith(f"minimoe-{pid}-")]


def processes_in_cgroups_of(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if f"minimoe-{pid}-" in Path(f"/proc/{entry.name}/cgroup").read_text():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class World:
    """The state of everything outside the submissions' folders, before and after grading."""

    def __init__(self, root: Path):
        self.root = root
        self.secret = root / "teacher-notes.txt"
        self.secret.write_text(f"the grader's own file {SECRET}\n")
        self.before = self.state()

    def state(self) -> dict[str, dict]:
        outs = tuple(p for p in self.root.rglob("out") if p.is_dir())
        return {
            "package": tree_state(package_dir()),
            "site-packages": tree_state(site_packages(), content=False),
            "tests": tree_state(self.root, skip=outs),
            "solutions": tree_state(ROOT / "solutions"),
        }

    def changes(self) -> dict[str, list[str]]:
        after = self.state()
        out = {}
        for key, was in self.before.items():
            now = after[key]
            changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            # Folders the batches create for their reports are expected.
            changed = [c for c in changed if not (key == "tests" and re.fullmatch(r"[^/]+/out/?", c))]
            if changed:
                out[key] = changed[:10]
        return out


def check_batch(batch: Batch, world_changes: dict) -> None:
    """The checks every attack shares: grader alive, bytes unchanged, nothing left, nothing outside touched."""
    assert batch.returncode == 0, f"{batch.name}: the grader failed\n{batch.stderr[-3000:]}"
    for sub in batch.submissions:
        assert sub.path.read_bytes() == sub.data, f"{sub.name}: the submitted file changed"
        batch.result(sub.name)  # a report for every submission
    if len(batch.submissions) > 1:
        summary = (batch.out / "summary.csv").read_text()
        assert len(summary.strip().splitlines()) == len(batch.submissions) + 1
    allowed = {"summary.csv"} | {p.name for p in batch.out.iterdir() if (p / "results.json").is_file()}
    assert {p.name for p in batch.out.iterdir()} <= allowed, sorted(p.name for p in batch.out.iterdir())
    assert not processes_in_cgroups_of(batch.grader_pid), f"{batch.name}: processes left in the sandbox's cgroup"
    assert not cgroups_of(batch.grader_pid), f"{batch.name}: cgroups left behind"
    assert not processes_with(TOKEN), "a process an attack started is still running"
    assert not world_changes, f"files outside the submissions' folders changed: {world_changes}"


def verdict(batch: Batch, name: str) -> None:
    sub = next(s for s in batch.submissions if s.name == name)
    assert sub.expect is not None
    points = batch.points(name)
    assert points == sub.expect, f"{name}: {points}, expected {sub.expect}\n{batch.result(name)['output']}"
