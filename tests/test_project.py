"""The repository keeps its promises: one source of truth, notebooks a reader can open anywhere."""

import re
import subprocess
import sys

from pathlib import Path

import nbformat
import pytest

from minimoe.course import CHAPTERS, colab_install_source, course_map

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb")) \
    + sorted((ROOT / "exercises").glob("*.ipynb"))


def test_readme_course_map_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert course_map(ROOT) in readme, "README's course map is stale: run `make release`"
    assert "make lab" in readme and "make test" in readme


def test_every_chapter_file_is_in_the_chapter_list():
    known = {Path(p).name for c in CHAPTERS for p in (c.notebook, c.exercise, c.solution)}
    for path in NOTEBOOKS:
        assert path.name in known, f"{path.relative_to(ROOT)} is not in minimoe.course.CHAPTERS"


def test_each_lecture_has_its_exercise():
    for c in CHAPTERS:
        if (ROOT / c.solution).exists():
            assert (ROOT / c.notebook).exists(), f"{c.solution} has no lecture {c.notebook}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_opens_the_same_way_everywhere(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == colab_install_source(), "the first code cell must be the Colab install cell"
    assert "setup(" in code[1].source, "the second code cell must call minimoe.course.setup()"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"(/work/|/root/|/home/[a-z]+/|/tmp/[A-Za-z0-9_]+/)", text), "a local path leaked"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "exercises" not in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_lectures_and_solutions_are_stored_executed(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.execution_count is not None for c in code), "run `make notebooks` to store outputs"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), "cells were run out of order"
    for c in code:
        errors = [o for o in c.outputs if o.output_type == "error"]
        assert not errors or "raises-exception" in c.metadata.get("tags", [])


def _names(reqs):
    return {re.split(r"[\s;<>=!\[]", r.strip(), maxsplit=1)[0].lower() for r in reqs}


def test_environment_yml_lists_what_pyproject_lists():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    for extra in ("course", "dev"):
        wanted |= _names(project["optional-dependencies"][extra])
    env = (ROOT / "environment.yml").read_text()
    listed = set(re.findall(r"^\s*-\s+([A-Za-z0-9_.-]+)", env, re.M))
    conda_names = {"pytorch": "torch", "python-build": "build"}  # conda-forge's names for PyPI's packages
    listed = {conda_names.get(n.lower(), n.lower()) for n in listed}
    missing = wanted - listed
    assert not missing, f"environment.yml lacks {sorted(missing)}"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "TORCH_SPEC=torch==2.13.0" in ci


def test_python_version_floor():
    assert sys.version_info >= (3, 10)


def test_the_last_line_of_make_test_says_what_ran():
    from types import SimpleNamespace as R

    from conftest import summary_line

    stats = {
        "passed": [R(nodeid="tests/test_a.py::t1", when="call", keywords={}),
                   R(nodeid="tests/test_wheel.py::t", when="call", keywords={"install": 1}),
                   R(nodeid="notebooks/00_x.ipynb::Cell 0", when="call", keywords={}),
                   R(nodeid="notebooks/00_x.ipynb::Cell 1", when="call", keywords={}),
                   R(nodeid="solutions/00_x.ipynb::Cell 0", when="call", keywords={})],
        "failed": [R(nodeid="tests/test_a.py::t2", when="call", keywords={})],
        "error": [R(nodeid="tests/test_a.py::t3", when="setup", keywords={})],
        "skipped": [R(nodeid="tests/test_a.py::t4", when="setup", keywords={})],
        "": [R(nodeid="tests/test_a.py::t1", when="teardown", keywords={})],
    }
    assert summary_line(stats, 90, "make test") == (
        "make test: 5 passed, 2 failed, 1 skipped in 1.5 min: 4 unit tests, 1 wheel and ipywidgets-7 checks, "
        "1 lecture, 1 solution and 0 exercise notebooks by nbval (3 cells)")


def test_make_lab_has_no_linux_only_step(tmp_path):
    """What `make lab` runs on a Mac: python3 -m venv, pip, tools/lab.py; Linux-only packages carry a marker."""
    proc = subprocess.run(["make", "-n", "lab", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    steps = proc.stdout
    assert "-m venv" in steps and "pip install" in steps and "tools/lab.py" in steps
    for linux_only in ("apt", "dpkg", "nproc", "ldconfig", "/proc/", "nvidia", "download.pytorch.org", "bwrap",
                       "sed -i", "readlink -f", "--index-url"):
        assert linux_only not in steps, f"`make lab` runs {linux_only!r}, which a Mac does not have"
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for req in reqs:
        if re.split(r"[\s;<>=!\[]", req, maxsplit=1)[0].lower() in ("triton", "nvidia-ml-py", "pynvml"):
            assert "platform_system == 'Linux'" in req, f"{req}: Linux-only, so it needs a platform marker"


def test_ci_installs_chromium_and_requires_the_browser_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci
    assert "MINIMOE_REQUIRE_BROWSER=1" in ci.split("make test")[0]
