"""Attacks on the limits: memory across processes, process count, disk, output, a first cell that
holds all the memory, functions that sleep just under the time limit, kernel deaths that replay
slow cells, and a chapter whose checks make many calls. Each is a reproducer notebook graded by
``minimoe grade`` in the sandbox."""

import re

import pytest

from attack_helpers import TOKEN, Batch, World, add_cells, check_batch, notebook, run_all, verdict

CH00 = "00_setup_and_tour.ipynb"
CH02 = "02_the_batter.ipynb"
FULL = {"00.linear_params": 2.0, "00.softmax": 4.0}
ZERO = {"00.linear_params": 0.0, "00.softmax": 0.0}

MEMORY_CHILDREN = f'''
import subprocess, sys
CHILD = 'import time; b = bytearray(1200 << 20); b[::4096] = b"x" * len(b[::4096]); print("held", flush=True); time.sleep(60)'
children = [subprocess.Popen([sys.executable, "-c", CHILD, {TOKEN!r}], stdout=subprocess.PIPE, text=True)
            for _ in range(3)]
said = [c.stdout.readline().startswith("held") for c in children]
import time
time.sleep(2)
held = sum(s and c.poll() is None for s, c in zip(said, children))  # holding it at the same time
for c in children:
    c.kill()
raise RuntimeError(f"REPORT held={{held}}")
'''

FORK_BOMB = '''
import os
children = []
try:
    for _ in range(5000):
        children.append(os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ))
except OSError:
    pass
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
raise RuntimeError(f"REPORT forks={len(children)}")
'''

DISK_FLOOD = '''
import os, sys
shared = os.path.dirname(sys.argv[sys.argv.index("-f") + 1])
written = {}
for folder in (shared, os.getcwd(), "/tmp", "/dev/shm"):
    written[folder] = 0
    for i in range(40):
        try:
            with open(os.path.join(folder, f"flood{i}"), "wb") as f:
                for _ in range(64):
                    f.write(b"x" * (4 << 20))
                    written[folder] += 4 << 20
        except OSError:
            break
raise RuntimeError(f"REPORT written={max(written.values()) >> 20}")
'''

PRINT_FLOOD = '''
import os, sys
for _ in range(64):
    sys.stdout.write("x" * (1 << 20) + "\\n")
for _ in range(64):
    os.write(1, b"y" * (1 << 20))
    os.write(2, b"z" * (1 << 20))
print("w" * (64 << 20))
'''

MEMORY_FIRST = '''
hoard = []
while True:
    hoard.append(bytearray(64 << 20))
'''

SLEEPY = '''
import sys, time, torch
def stable_softmax(x, dim=-1):
    if any(f.f_code.co_name == "__minimoe_call__" for f in [sys._getframe(1)]):
        time.sleep(19)  # just under the cell timeout, only when the grader calls
    shifted = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)
'''

SLOW_CH02 = '''
import functools, sys, time
def _slow(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if sys._getframe(1).f_code.co_name == "__minimoe_call__":
            time.sleep(1.5)
        return fn(*args, **kwargs)
    return wrapper
most_frequent_pair, merge, add_cot, split_by_problem = (_slow(most_frequent_pair), _slow(merge), _slow(add_cot),
                                                     _slow(split_by_problem))
'''


def replays_notebook():
    nb = notebook(CH00)
    nb = add_cells(nb, "import time\ntime.sleep(10)", "import time\ntime.sleep(10)", "import time\ntime.sleep(10)",
                   after="import torch")
    nb = add_cells(nb, "import os\nos._exit(1)", after="def count_linear_params")
    return add_cells(nb, "import os\nos._exit(1)", after="def stable_softmax")


def report(batch: Batch, name: str, key: str) -> int | None:
    m = re.search(rf"REPORT {key}=(\d+)", batch.text(name))
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def attacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    limits = Batch(root, "limits", "00")
    limits.add("memory_children", add_cells(notebook(CH00), MEMORY_CHILDREN, after="import torch"), FULL)
    limits.add("fork_bomb", add_cells(notebook(CH00), FORK_BOMB, after="import torch"), FULL)
    limits.add("disk_flood", add_cells(notebook(CH00), DISK_FLOOD, after="import torch"), FULL)
    limits.add("print_flood", add_cells(notebook(CH00), PRINT_FLOOD, after="import torch"), FULL)
    limits.add("memory_first", add_cells(notebook(CH00), MEMORY_FIRST, after="import torch"), FULL)
    sleepy = Batch(root, "sleepy", "00", args=("--timeout", "100", "--cell-timeout", "20"))
    sleepy.add("sleepy", add_cells(notebook(CH00), SLEEPY), {"00.linear_params": 2.0, "00.softmax": 0.0})
    replays = Batch(root, "replays", "00", args=("--timeout", "60", "--cell-timeout", "20"))
    replays.add("replays", replays_notebook(), None)
    many = Batch(root, "many_calls", "02", args=("--timeout", "60", "--cell-timeout", "30"))
    many.add("many_calls", add_cells(notebook(CH02), SLOW_CH02), None)
    world = World(root)
    batches = [sleepy, replays, many, limits]
    run_all(batches, parallel=4)
    return {"limits": limits, "sleepy": sleepy, "replays": replays, "many": many, "world": world.changes()}


def test_the_grader_held_and_nothing_outside_changed(attacks):
    for key in ("limits", "sleepy", "replays", "many"):
        check_batch(attacks[key], attacks["world"])


@pytest.mark.parametrize("name", ["memory_children", "fork_bomb", "disk_flood", "print_flood", "memory_first"])
def test_a_limit_hit_costs_nothing_else(attacks, name):
    verdict(attacks["limits"], name)


def test_memory_is_capped_across_processes(attacks):
    held = report(attacks["limits"], "memory_children", "held")
    assert held is None or held <= 1, f"{held} processes of 1.2 GB held memory together under --memory 2"


def test_processes_are_capped(attacks):
    forks = report(attacks["limits"], "fork_bomb", "forks")
    assert forks is not None and forks < 256


def test_disk_is_capped(attacks):
    text = attacks["limits"].text("disk_flood")
    written = report(attacks["limits"], "disk_flood", "written")  # MB in the fullest folder, if the kernel lived
    assert "wrote too much" in text or (written is not None and written <= 512), text


def test_output_is_capped_and_the_grader_stays_small(attacks):
    limits = attacks["limits"]
    text = limits.text("print_flood")
    assert "printed more than" in text and "raw stdout" in text
    assert limits.grader_peak_rss < 1 << 30, f"the grader grew to {limits.grader_peak_rss >> 20} MB"


def test_a_first_cell_that_hoards_memory_costs_only_itself(attacks):
    result = attacks["limits"].result("memory_first")
    assert "MemoryError" in result["output"] or "died" in result["output"]
    assert result["extra_data"]["restarts"] >= 1


def test_one_deadline_covers_checks_that_sleep_under_the_cell_timeout(attacks):
    sleepy = attacks["sleepy"]
    report_ = sleepy.result("sleepy")
    assert report_["execution_time"] < 100 + 30, "the submission ran past its deadline"
    outputs = " ".join(t["output"] for t in report_["tests"] if t["name"].startswith("00.softmax"))
    assert "ran past" in outputs


def test_replays_after_kernel_deaths_count_against_the_deadline(attacks):
    report_ = attacks["replays"].result("replays")
    assert report_["execution_time"] < 60 + 30
    assert report_["score"] == 0 and "time limit" in report_["output"] + " ".join(t["output"] for t in report_["tests"])


def test_many_slow_calls_stop_at_the_deadline(attacks):
    report_ = attacks["many"].result("many_calls")
    assert report_["execution_time"] < 60 + 30
    assert "time limit" in " ".join(t["output"] for t in report_["tests"])
    assert report_["score"] < report_["max_score"]
