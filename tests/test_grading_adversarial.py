"""Submissions that try to hang, exhaust, kill or fool the grader. Each costs only its own points."""

import json
import time

import uuid

from grading_helpers import EXERCISE, FAST, FULL, grade, insert_after, make, messages, processes_with, replace_cell
from minimoe.grading.grader import write_reports
from minimoe.grading.kernel import Limits

HANG_RESISTANT = (
    "import time\n"
    "while True:\n"
    "    try:\n"
    "        time.sleep(0.05)\n"
    "    except KeyboardInterrupt:\n"
    "        pass\n"
)


def test_a_cell_that_hangs_even_through_interrupts_gets_a_new_kernel(tmp_path):
    start = time.monotonic()
    points, result = grade(make(tmp_path, "stubborn", insert_after("def count_linear_params", HANG_RESISTANT)))
    assert points == FULL  # the cells before it are replayed in the new kernel
    assert [r.status for r in result.cells].count("timeout") == 1
    assert result.restarts == 1
    assert time.monotonic() - start < FAST.timeout


def test_a_hanging_function_costs_only_its_exercise(tmp_path):
    body = "def count_linear_params(in_features, out_features, bias=True):\n" + "".join(
        "    " + line + "\n" for line in HANG_RESISTANT.splitlines())
    start = time.monotonic()
    path = make(tmp_path, "hanging_function", replace_cell("def count_linear_params", body))
    # Its demo cell and check cell hang too while the notebook runs; drop them.
    nb_edit = __import__("nbformat").read(path, as_version=4)
    nb_edit.cells = [c for c in nb_edit.cells if "count_linear_params(4" not in c.source
                     and "00.linear_params" not in c.source]
    __import__("nbformat").write(nb_edit, path)
    points, result = grade(path)
    assert points == {"00.linear_params": 0, "00.softmax": 4}
    assert "ran past" in messages(result, "00.linear_params")
    assert time.monotonic() - start < FAST.timeout  # hung once, then not run again


def test_allocating_far_beyond_the_memory_limit_fails_inside_the_kernel(tmp_path):
    hog = "big = torch.ones(4 * 2**30)  # 16 GiB"
    points, result = grade(make(tmp_path, "hog", insert_after("import torch", hog)), Limits(120, 30, memory_gb=2))
    assert points == FULL
    assert any(r.status in ("error", "died") for r in result.cells)


def test_a_function_that_exhausts_memory_costs_only_its_exercise(tmp_path):
    source = ("def stable_softmax(x, dim=-1):\n"
              "    hoard = []\n"
              "    while True:\n"
              "        hoard.append(bytearray(2**28))\n")
    path = make(tmp_path, "hog_function", replace_cell("def stable_softmax", source))
    points, result = grade(path, Limits(120, 30, memory_gb=2))
    assert points == {"00.linear_params": 2, "00.softmax": 0}
    assert "MemoryError" in messages(result, "00.softmax") or "kernel" in messages(result, "00.softmax")


def test_a_cell_that_kills_its_kernel(tmp_path):
    path = make(tmp_path, "exit", insert_after("def count_linear_params", "import os\nos._exit(3)"))
    points, result = grade(path)
    assert points == FULL  # later cells run in a new kernel, earlier ones are replayed
    assert [r.status for r in result.cells].count("died") == 1


def test_a_function_that_kills_its_kernel_costs_only_its_exercise(tmp_path):
    source = "def count_linear_params(in_features, out_features, bias=True):\n    import os\n    os._exit(0)"
    path = make(tmp_path, "exit_function", replace_cell("def count_linear_params", source))
    points, result = grade(path)
    assert points == {"00.linear_params": 0, "00.softmax": 4}
    assert "killed the kernel" in messages(result, "00.linear_params")


def test_printing_a_score_or_writing_results_gains_nothing(tmp_path):
    out = tmp_path / "graded"
    fake = json.dumps({"score": 100, "max_score": 6, "tests": []})
    cheat = (
        "print('score: 100')\nprint('6/6 points - all checks pass')\n"
        f"open('results.json', 'w').write({fake!r})\n"
        "import os\n"
        f"os.makedirs({str(out / '00_fake')!r}, exist_ok=True)\n"
        f"open({str(out / '00_fake' / 'results.json')!r}, 'w').write({fake!r})\n"
    )
    path = make(tmp_path, "fake", insert_after("import torch", cheat), base=EXERCISE)
    points, result = grade(path)
    assert sum(points.values()) == 0
    write_reports([result], out)
    assert json.loads((out / "00_fake" / "results.json").read_text())["score"] == 0


def test_patching_the_checkers_inside_the_kernel_changes_nothing(tmp_path):
    cheat = (
        "import torch, numpy, minimoe.grading, minimoe.grading.registry\n"
        "torch.allclose = lambda *a, **k: True\n"
        "torch.equal = lambda *a, **k: True\n"
        "torch.testing.assert_close = lambda *a, **k: None\n"
        "numpy.allclose = lambda *a, **k: True\n"
        "minimoe.grading.check = lambda *a, **k: print('all checks pass')\n"
        "minimoe.grading.registry.expect_close = lambda *a, **k: None\n"
        "check = minimoe.grading.check\n"
        "class Anything(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def count_linear_params(in_features, out_features, bias=True):\n"
        "    return Anything(0)\n"
        "def stable_softmax(x, dim=-1):\n"
        "    return torch.zeros_like(x)\n"
    )
    def edit(nb):
        from nbformat.v4 import new_code_cell
        nb.cells.append(new_code_cell(cheat))
        nb.cells.append(new_code_cell("check('00.softmax')"))
    points, result = grade(make(tmp_path, "patched", edit, base=EXERCISE))
    assert points == {"00.linear_params": 0, "00.softmax": 0}


def test_processes_a_notebook_starts_are_stopped(tmp_path):
    token = f"minimoe-test-{uuid.uuid4().hex}"
    spawn = ("import subprocess, sys\n"
             f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {token!r}])\n"
             f"grandchild = subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(600)', {token!r}])")
    points, _ = grade(make(tmp_path, "spawn", insert_after("import torch", spawn)))
    assert points == FULL
    assert not processes_with(token), "a process the notebook started outlived its grading"
