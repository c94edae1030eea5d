"""Grade a class of chapter-05 submissions with ``minimoe grade``, with and without the sandbox.

    .venv/bin/python benchmarks/grade_class.py              # 30 submissions, both modes
    .venv/bin/python benchmarks/grade_class.py --students 10 --json result.json

It also times a kernel's start (to its first answered cell) with and without the sandbox, the two
interleaved round by round, which measures the sandbox's own cost with less noise from the load.

The class: a third hand in the solution, a third the untouched exercise, a third a partial answer
(the aux loss right, the bias update with its sign flipped). Each copy differs by a comment, so no
two files are the same. Each mode runs ``minimoe grade`` once over the whole class and reads
``summary.csv``; the script checks every score against what that kind of submission earns, then
prints the time per submission and the sandbox's overhead. The class is graded in parts (``--rounds``),
each part with the sandbox and then without, so that both modes see the same swings of a shared
machine's load; the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "05_keeping_experts_busy.ipynb"
EXERCISE = ROOT / "exercises" / "05_keeping_experts_busy.ipynb"
FLIPPED = '''
def update_bias(bias, counts, gamma):
    counts = counts.float()
    return bias - gamma * torch.sign(counts.mean() - counts)  # the sign flipped
'''


def make_class(folder: Path, students: int) -> dict[str, float]:
    """Write the submissions; return the score each should get."""
    expected = {}
    for i in range(students):
        kind = ("full", "blank", "partial")[i % 3]
        nb = nbformat.read(EXERCISE if kind == "blank" else SOLUTION, as_version=4)
        if kind == "partial":
            nb.cells.append(new_code_cell(FLIPPED))
        nb.cells.append(new_code_cell(f"# student {i:03d}"))
        path = folder / f"s{i:03d}_{kind}_05.ipynb"
        nbformat.write(nb, path)
        expected[str(path)] = {"full": 9.0, "blank": 0.0, "partial": 5.0}[kind]
    return expected


def grade(paths: list[str], out: Path, sandbox: bool, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "minimoe.cli", "grade", *paths, "--chapter", "05", "--out", str(out), *extra]
    if not sandbox:
        cmd.append("--no-sandbox")
    load = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"minimoe grade failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "summary.csv").open()))
    return {"wall": wall, "seconds": [float(r["seconds"]) for r in rows], "loads": [load, os.getloadavg()[0]],
            "scores": {r["submission"]: float(r["score"]) for r in rows}, "sandboxed": {r["sandboxed"] for r in rows}}


def grade_class(folder: Path, out: Path, rounds: int, extra: list[str]) -> list[dict]:
    """Grade the class in ``rounds`` parts, each part with the sandbox and then without, so that both
    modes see the same changes in the machine's load."""
    paths = sorted(str(p) for p in folder.glob("*.ipynb"))
    parts = [paths[i::rounds] for i in range(rounds)]
    runs = {True: [], False: []}
    for i, part in enumerate(parts):
        for sandbox in (True, False):
            runs[sandbox].append(grade(part, out / f"{'sandbox' if sandbox else 'plain'}-{i}", sandbox, extra))
    summary = []
    for sandbox, parts_run in runs.items():
        seconds = [s for r in parts_run for s in r["seconds"]]
        loads = [x for r in parts_run for x in r["loads"]]
        summary.append({
            "sandbox": sandbox, "submissions": len(seconds), "wall_s": round(sum(r["wall"] for r in parts_run), 1),
            "per_submission_s": {"mean": round(statistics.mean(seconds), 2), "median": round(statistics.median(seconds), 2),
                                 "max": round(max(seconds), 2)},
            "load_min": round(min(loads), 2), "load_max": round(max(loads), 2),
            "scores": {k: v for r in parts_run for k, v in r["scores"].items()},
            "sandboxed": sorted(set().union(*(r["sandboxed"] for r in parts_run)))})
    return summary


def kernel_starts(rounds: int) -> dict[str, list[float]]:
    """Seconds from nothing to a kernel that has answered one cell, sandbox and not, interleaved."""
    from minimoe.grading.kernel import KernelSession, Limits

    times: dict[str, list[float]] = {"sandbox": [], "no sandbox": []}
    for _ in range(rounds):
        for sandbox in (True, False):
            with tempfile.TemporaryDirectory(prefix="minimoe-start-") as tmp:
                start = time.monotonic()
                session = KernelSession(Path(tmp), Limits(), sandbox=sandbox)
                try:
                    session.start()
                    assert session._execute("x = 1", 120)[0] == "ok"
                finally:
                    session.close()
                times["sandbox" if sandbox else "no sandbox"].append(time.monotonic() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--grade-args", default="--timeout 600 --cell-timeout 60 --memory 4",
                        help="limits passed to minimoe grade")
    parser.add_argument("--rounds", type=int, default=3,
                        help="grade the class in this many parts, each with and then without the sandbox")
    parser.add_argument("--starts", type=int, default=10,
                        help="rounds of the kernel start-up comparison (sandbox and not, interleaved)")
    args = parser.parse_args(argv)
    starts = kernel_starts(args.starts)
    with tempfile.TemporaryDirectory(prefix="minimoe-class-") as tmp:
        tmp = Path(tmp)
        (tmp / "class").mkdir()
        expected = make_class(tmp / "class", args.students)
        runs = grade_class(tmp / "class", tmp / "out", args.rounds, args.grade_args.split())
        for run in runs:
            wrong = {p: (run["scores"].get(p), s) for p, s in expected.items() if run["scores"].get(p) != s}
            if wrong:
                raise SystemExit(f"unexpected scores ({'sandbox' if run['sandbox'] else 'no sandbox'}): {wrong}")
    on, off = runs
    summary = {
        "date": time.strftime("%Y-%m-%d"), "students": args.students, "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs],
        "sandbox_overhead_per_submission_s": round(on["per_submission_s"]["mean"] - off["per_submission_s"]["mean"], 2),
        "sandbox_overhead_ratio": round(on["wall_s"] / off["wall_s"], 3),
        "kernel_start_s": {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3)}
                           for k, v in starts.items()},
    }
    print(f"{args.students} chapter-05 submissions, {os.cpu_count()} CPUs")
    print(f"{'mode':<12} {'wall s':>8} {'mean s/sub':>11} {'median':>8} {'max':>7} {'load min-max':>14}")
    for r in runs:
        p = r["per_submission_s"]
        print(f"{'sandbox' if r['sandbox'] else 'no sandbox':<12} {r['wall_s']:>8} {p['mean']:>11} {p['median']:>8} "
              f"{p['max']:>7} {r['load_min']:>7}-{r['load_max']:<6}")
    print(f"sandbox overhead: {summary['sandbox_overhead_per_submission_s']:+} s per submission, "
          f"{summary['sandbox_overhead_ratio']}x wall-clock; every score as expected")
    ks = summary["kernel_start_s"]
    print(f"kernel start to first reply, {args.starts} interleaved rounds: sandbox median {ks['sandbox']['median']} s "
          f"(min {ks['sandbox']['min']}), no sandbox median {ks['no sandbox']['median']} s (min {ks['no sandbox']['min']})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
