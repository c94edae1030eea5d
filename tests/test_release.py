"""Release: exercises/ is exactly what solutions/ makes, with no answer left in it."""

import ast
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minimoe.grading.release import ReleaseError, release, release_notebook, render, stub_source

ROOT = Path(__file__).resolve().parent.parent


def test_exercises_are_up_to_date():
    stale = release(ROOT / "solutions", ROOT / "exercises", check_only=True)
    assert stale == [], f"out of date: {[str(p) for p in stale]}; run `make release`"


def _solution_lines(source):
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() == "# BEGIN SOLUTION":
            inside = True
        elif line.strip() == "# END SOLUTION":
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_no_answer_reaches_the_student(path):
    solution = nbformat.read(path, as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    text = "\n".join(c.source for c in exercise.cells)
    assert "BEGIN SOLUTION" not in text
    answers = [line for c in solution.cells if c.cell_type == "code" for line in _solution_lines(c.source)]
    assert answers, "a solution notebook without solution blocks"
    for line in answers:
        assert line not in text, f"answer line leaked into the exercise: {line!r}"
    for cell in exercise.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            ast.parse(cell.source)  # the stubs are valid Python


def test_stub_keeps_indentation_and_says_whether_the_cell_raises():
    src = "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n    # END SOLUTION\n\nprint(f)"
    out, changed, top = stub_source(src)
    assert changed and not top
    assert out == ("def f(x):\n    y = 1\n    # YOUR CODE HERE\n"
                   '    raise NotImplementedError("replace this line with your solution")\n\nprint(f)')
    out, changed, top = stub_source("# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION")
    assert changed and top and "42" not in out
    assert stub_source("x = 1") == ("x = 1", False, False)


@pytest.mark.parametrize("src, message", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
])
def test_unbalanced_markers_are_errors(src, message):
    with pytest.raises(ReleaseError, match=message):
        stub_source(src, "nb, cell 3")


def test_release_strips_outputs_drops_revealing_cells_and_tags_raising_ones():
    nb = new_notebook(cells=[
        new_markdown_cell("intro"),
        new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", execution_count=1,
                      outputs=[nbformat.v4.new_output("stream", text="hi")]),
        new_code_cell("print(secret_answer)", metadata={"tags": ["solution-only"]}),
        new_code_cell("f(2)", metadata={"tags": ["exercise-raises"]}),
        new_code_cell("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION"),
    ])
    student = release_notebook(nb)
    assert len(student.cells) == 4
    assert nb.cells[1].outputs, "the solution notebook must not be modified"
    stub, call, define = student.cells[1], student.cells[2], student.cells[3]
    assert stub.outputs == [] and stub.execution_count is None
    assert stub.metadata["tags"] == ["raises-exception"]
    assert call.metadata["tags"] == ["raises-exception"]
    assert "tags" not in define.metadata  # defining a stubbed function does not raise
    assert "secret_answer" not in render(student)


def test_release_writes_and_removes_stale_files(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    ex.mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION")]), sol / "01_a.ipynb")
    (ex / "99_old.ipynb").write_text("{}")
    assert set(p.name for p in release(sol, ex, check_only=True)) == {"01_a.ipynb", "99_old.ipynb"}
    assert not (ex / "01_a.ipynb").exists()  # check_only writes nothing
    release(sol, ex)
    assert (ex / "01_a.ipynb").exists() and not (ex / "99_old.ipynb").exists()
    assert release(sol, ex, check_only=True) == []
