"""Grading prints the table and nothing else: notebooks without cell ids are read without nbformat's warnings."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest

from minimoe.grading.normalize import ensure_cell_ids, notebook_with_ids

ROOT = Path(__file__).resolve().parent.parent


def _notebook(ids, minor=5):
    cells = [{"cell_type": "code", "metadata": {}, "source": f"x = {i}", "outputs": [], "execution_count": None}
             for i in range(len(ids))]
    for cell, cell_id in zip(cells, ids):
        if cell_id is not None:
            cell["id"] = cell_id
    return {"nbformat": 4, "nbformat_minor": minor, "metadata": {}, "cells": cells}


@pytest.mark.parametrize("ids, expected", [
    ([None, None, None], ["cell-0", "cell-1", "cell-2"]),
    (["a", None, "a"], ["a", "cell-1", "cell-2"]),          # a duplicate gets a new id, the first keeps its own
    (["cell-1", None], ["cell-1", "cell-1-1"]),             # never a copy of an id already in the notebook
    (["a", "b"], ["a", "b"]),
])
def test_cell_ids_are_filled_in_deterministically(ids, expected):
    raw = _notebook(ids)
    changed = ensure_cell_ids(raw)
    assert [c["id"] for c in raw["cells"]] == expected
    assert changed == sum(a != b for a, b in zip(ids, expected))
    again = _notebook(ids)
    ensure_cell_ids(again)
    assert again == raw


@pytest.mark.parametrize("raw", [_notebook([None], minor=4), [1, 2], {"nbformat": 4, "nbformat_minor": 5, "cells": "x"}])
def test_other_formats_and_garbage_are_left_for_nbformat(raw):
    before = json.dumps(raw)
    assert ensure_cell_ids(raw) == 0 and json.dumps(raw) == before


def test_reading_a_notebook_without_ids_warns_nothing():
    text = json.dumps(_notebook([None, None]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb = notebook_with_ids(text)
    assert [c.id for c in nb.cells] == ["cell-0", "cell-1"]
    nbformat.validate(nb)
    with pytest.warns(Warning, match="missing an id"):  # what nbformat itself does with the same text
        nbformat.reads(text, as_version=4)


def test_grade_prints_only_the_table_for_a_notebook_without_ids(tmp_path):
    raw = json.loads((ROOT / "solutions" / "00_setup_and_tour.ipynb").read_text(encoding="utf-8"))
    for cell in raw["cells"]:
        cell.pop("id")
    submission = tmp_path / "00_setup_and_tour.ipynb"
    submission.write_text(json.dumps(raw), encoding="utf-8")
    before = submission.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "minimoe.cli", "grade", str(submission), "--chapter", "00",
                           "--out", str(tmp_path / "graded")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr + proc.stdout, proc.stderr
    assert re.search(r"\(chapter 00\): (\S+)/\1 points", proc.stdout), proc.stdout  # the solution scores full marks
    assert submission.read_bytes() == before
