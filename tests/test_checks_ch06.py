"""Chapter 06's Triton exercises: the checks launch the student's kernel itself, and wrong kernels lose
exactly the points of the mistake they make. The kernels run in a fresh Python with TRITON_INTERPRET=1
(``ch06_kernels.py``), since Triton fixes interpreted or compiled mode when first imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimoe.dispatch import triton_importable
from minimoe.grading import StudentError
from minimoe.grading.student import LocalStudent, launch_kernel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results():
    if not triton_importable():
        pytest.skip("Triton is not installed here (Linux only)")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ch06_kernels.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    return json.loads(line.removeprefix("RESULTS "))


def passed(outcomes: dict) -> set[str]:
    return {name for name, (ok, _) in outcomes.items() if ok}


def test_right_kernels_pass_every_check(results):
    for who in ("tile right", "wgrad right"):
        assert all(ok for ok, _ in results[who].values()), results[who]


def test_a_tile_that_writes_past_its_end_loses_the_edge_check(results):
    # in the first check the tiles run in order and the last one is full, so the overrun is overwritten
    assert passed(results["tile no row mask"]) == {"one expert per tile, float32"}, results["tile no row mask"]


def test_a_tile_that_ignores_the_schedules_expert_fails(results):
    assert passed(results["tile expert zero"]) == set(), results["tile expert zero"]


def test_a_python_function_is_not_a_kernel(results):
    messages = [m for _, m in results["tile python"].values()]
    assert all("not a Triton kernel" in m for m in messages), messages


def test_an_idle_expert_must_still_store_zeros(results):
    got = results["wgrad skips idle"]
    assert passed(got) == {"each expert's rows, float32"}, got
    assert "never written" in got["an idle expert, uneven rows, odd widths, float16"][1]


def test_launch_refuses_what_is_not_a_kernel_and_a_bad_grid():
    with pytest.raises(TypeError, match="not a Triton kernel"):
        launch_kernel(lambda *a: None, (1,), [torch.zeros(1)], {})
    student = LocalStudent({"k": print})
    with pytest.raises(StudentError, match="not a Triton kernel"):
        student.launch("k", (1,), torch.zeros(1))
    with pytest.raises(StudentError, match="not defined"):
        LocalStudent({}).launch("k", (1,))
