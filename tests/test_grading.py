"""minimoe grade end to end: the command, its reports, and submissions that go wrong honestly."""

import csv
import json
import subprocess
import sys

import pytest

from grading_helpers import EXERCISE, FULL, SOLUTION, grade, insert_after, make, messages, replace_cell
from minimoe.grading.grader import GradingError, grade_notebook


def test_cli_grades_solution_full_and_exercise_zero(tmp_path):
    out = tmp_path / "graded"
    proc = subprocess.run(
        [sys.executable, "-m", "minimoe.cli", "grade", str(SOLUTION), str(EXERCISE), "--out", str(out),
         "--cell-timeout", "30", "--chapter", "00"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6/6" in proc.stdout and "0/6" in proc.stdout
    solution = json.loads((out / "solutions__00_setup_and_tour" / "results.json").read_text())
    exercise = json.loads((out / "exercises__00_setup_and_tour" / "results.json").read_text())
    assert (solution["score"], solution["max_score"]) == (6, 6)
    assert (exercise["score"], exercise["max_score"]) == (0, 6)
    for report in (solution, exercise):
        assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(report["tests"][0])
        assert report["stdout_visibility"] == "hidden" and report["extra_data"]["sandbox"].startswith("bubblewrap")
    assert all(t["status"] == "passed" for t in solution["tests"])
    assert all(t["status"] == "failed" and "Hint:" in t["output"] for t in exercise["tests"])
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["score"], r["max_score"]) for r in rows] == [("6", "6"), ("0", "6")]
    assert rows[0]["00.softmax"] == "4" and [r["sandboxed"] for r in rows] == ["yes", "yes"]


def test_cli_exit_status_is_about_grading_not_scores(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "minimoe.cli", "grade", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    assert run(str(tmp_path / "00_missing.ipynb"), "--chapter", "00").returncode == 2
    assert run(str(SOLUTION), "--timeout", "-5", "--chapter", "00").returncode == 2
    no_chapter = run(str(SOLUTION), "--out", str(tmp_path / "nothing"))
    assert no_chapter.returncode == 2 and "--chapter" in no_chapter.stderr
    assert not (tmp_path / "nothing").exists()
    assert run(str(SOLUTION), "--chapter", "77").returncode == 2
    assert run(str(SOLUTION), "--chapter", "00", "--student-id", "(unclosed").returncode == 2
    broken = tmp_path / "00_not_json.ipynb"
    broken.write_text("{this is not json")
    proc = run(str(broken), "--out", str(tmp_path / "g"), "--chapter", "00")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "g" / "00_not_json" / "results.json").read_text())["score"] == 0


def test_invalid_json_scores_zero_with_a_reason(tmp_path):
    path = tmp_path / "00_garbage.ipynb"
    path.write_bytes(b"\x00\xff not a notebook")
    points, result = grade(path)
    assert points == {"00.linear_params": 0, "00.softmax": 0}
    assert "not a readable notebook" in result.problem


def test_a_notebook_with_no_cells_list_scores_zero(tmp_path):
    path = tmp_path / "00_empty.ipynb"
    path.write_text('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}')
    points, result = grade(path)
    assert sum(points.values()) == 0 and result.problem


def test_the_chapter_must_come_from_the_assignment(tmp_path):
    path = tmp_path / "00_homework.ipynb"
    path.write_bytes(SOLUTION.read_bytes())
    with pytest.raises(GradingError, match="--chapter"):
        grade_notebook(path)  # neither its name nor its checks decide
    with pytest.raises(GradingError, match="no exercises"):
        grade_notebook(path, chapter="42")


def test_the_chapter_can_come_from_the_released_notebook(tmp_path):
    path = tmp_path / "my_homework.ipynb"
    path.write_bytes(SOLUTION.read_bytes())
    result = grade_notebook(path, chapter=str(EXERCISE))
    assert result.chapter == "00" and result.score == 6


def test_a_cell_that_raises_costs_nothing_else(tmp_path):
    path = make(tmp_path, "raises", insert_after("import torch", "raise RuntimeError('boom')"))
    points, result = grade(path)
    assert points == FULL
    assert "RuntimeError: boom" in result.notes()


def test_a_wrong_function_costs_only_its_exercise(tmp_path):
    path = make(tmp_path, "wrong", replace_cell("def stable_softmax", "def stable_softmax(x, dim=-1):\n    return x"))
    points, result = grade(path)
    assert points == {"00.linear_params": 2, "00.softmax": 0}
    assert "values differ" in messages(result, "00.softmax")


def test_deleted_cells_cost_only_what_they_defined(tmp_path):
    def edit(nb):
        from grading_helpers import code_index
        del nb.cells[code_index(nb, "def stable_softmax")]
    points, result = grade(make(tmp_path, "deleted", edit))
    assert points == {"00.linear_params": 2, "00.softmax": 0}
    assert "not defined" in messages(result, "00.softmax")


def test_reordered_cells_still_define_everything(tmp_path):
    points, _ = grade(make(tmp_path, "reordered", lambda nb: nb.cells.reverse()))
    assert points == FULL


def test_a_regrade_gives_the_same_verdicts_and_messages(tmp_path):
    # Wrong only in its values: the messages quote differences measured on the random inputs.
    path = make(tmp_path, "sigmoid", replace_cell("def stable_softmax", "def stable_softmax(x, dim=-1):\n    return x.sigmoid()"))
    first, second = grade(path)[1], grade(path)[1]
    assert [(o.name, o.points, o.message) for o in first.outcomes] == [(o.name, o.points, o.message) for o in second.outcomes]
    assert "max |difference|" in messages(first, "00.softmax")


def test_no_sandbox_is_an_explicit_choice_that_every_report_records(tmp_path):
    out = tmp_path / "graded"
    proc = subprocess.run([sys.executable, "-m", "minimoe.cli", "grade", str(SOLUTION), str(EXERCISE), "--chapter", "00",
                           "--out", str(out), "--no-sandbox"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "--no-sandbox" in proc.stderr and "NOT SANDBOXED" in proc.stdout
    report = json.loads((out / "solutions__00_setup_and_tour" / "results.json").read_text())
    assert report["score"] == 6 and report["output"].startswith("[graded without a sandbox]")
    assert report["extra_data"]["sandbox"].startswith("none (--no-sandbox)")
    assert [r["sandboxed"] for r in csv.DictReader((out / "summary.csv").open())] == ["no", "no"]
