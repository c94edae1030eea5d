"""Colab: the install cell does what a workshop needs, and every link points at one published address."""

import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

import minimoe
from minimoe import course
from minimoe.cli import main as cli
from minimoe.grading.release import release
from minimoe.publish import (check_ref, check_repo, current_address, disagreements, github_repo_of, publish,
                             publish_notebook)

ROOT = Path(__file__).resolve().parent.parent


# --- the install cell ---------------------------------------------------------------------------

def _run_cell(monkeypatch, colab: bool) -> list:
    """Run the install cell as a notebook would, with or without a (fake) google.colab; return pip's calls."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((list(args), kw)))
    if colab:
        google = types.ModuleType("google")
        google.__path__ = []
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.setitem(sys.modules, "google.colab", None)  # `import google.colab` raises ImportError
    exec(compile(course.colab_install_source(), "<install cell>", "exec"), {})
    return calls


def test_on_colab_the_cell_installs_this_release_of_the_package_alone(monkeypatch):
    calls = _run_cell(monkeypatch, colab=True)
    assert calls == [([sys.executable, "-m", "pip", "install", "-q",
                       f"minimoe @ git+https://github.com/{course.GITHUB_REPO}@{course.GITHUB_REF}"],
                      {"check": True})]
    args = calls[0][0]
    assert not any(a in args for a in ("-U", "--upgrade", "--force-reinstall", "--no-deps"))
    assert not any(word in " ".join(args) for word in ("[course]", "[dev]", "torch", "jupyter", "ipywidgets"))


def test_outside_colab_the_cell_runs_nothing(monkeypatch):
    assert _run_cell(monkeypatch, colab=False) == []


def test_pip_leaves_colabs_torch_alone():
    """pip installs a requirement only when it is not met: an unpinned torch is met by Colab's own."""
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch" in deps, "torch must stay unpinned, or pip would replace Colab's CUDA build"
    names = {re.split(r"[\s;<>=!\[~]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & {"jupyterlab", "notebook", "ipywidgets", "ipykernel", "matplotlib"}


def test_the_release_is_pinned_to_this_versions_tag():
    assert course.GITHUB_REF == f"v{minimoe.__version__}" or re.fullmatch(r"[0-9a-f]{40}", course.GITHUB_REF), \
        f"GITHUB_REF {course.GITHUB_REF!r}: release the notebooks at the tag of this version (make release REF=v...)"
    assert (course.GITHUB_REPO, course.GITHUB_REF) == current_address(ROOT)


# --- every link agrees --------------------------------------------------------------------------

def test_every_link_badge_and_install_cell_agrees():
    problems = disagreements(ROOT)
    assert problems == [], "\n".join(problems[:20]) + "\nrun `make release`"


def test_release_check_reports_nothing_to_do():
    assert publish(ROOT, course.GITHUB_REPO, course.GITHUB_REF, check_only=True) == []


@pytest.fixture
def repo_copy(tmp_path):
    """The parts of the repository that publishing reads and writes, copied."""
    for folder in ("notebooks", "solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "minimoe").mkdir()
    shutil.copy(ROOT / "minimoe" / "course.py", tmp_path / "minimoe" / "course.py")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_link_that_disagrees_is_found(repo_copy):
    nb_path = repo_copy / "notebooks" / "03_the_pan_dense.ipynb"
    nb_path.write_text(nb_path.read_text().replace(f"/blob/{course.GITHUB_REF}/", "/blob/main/", 1))
    sol = repo_copy / "solutions" / "02_the_batter.ipynb"
    sol.write_text(sol.read_text().replace(f"{course.GITHUB_REPO}@", "someone/else@", 1))
    ex = repo_copy / "exercises" / "05_keeping_experts_busy.ipynb"
    ex.write_text(ex.read_text().replace("exercises/05_keeping_experts_busy.ipynb", "exercises/04_experts_and_the_router.ipynb", 1))
    readme = repo_copy / "README.md"
    readme.write_text(readme.read_text() + f"\n[x](https://colab.research.google.com/github/{course.GITHUB_REPO}/blob/"
                                           f"{course.GITHUB_REF}/notebooks/99_missing.ipynb)\n")
    problems = "\n".join(disagreements(repo_copy))
    assert "notebooks/03_the_pan_dense.ipynb, cell 0: Colab link to" in problems and "@main" in problems
    assert "solutions/02_the_batter.ipynb, cell 1: installs someone/else@" in problems
    assert "solutions/02_the_batter.ipynb: the first code cell is not the Colab install cell" in problems
    assert "exercises/05_keeping_experts_busy.ipynb, cell 0: Colab badge opens" in problems
    assert "README.md: Colab link to notebooks/99_missing.ipynb, which does not exist" in problems
    assert cli(["release", "--check", "--root", str(repo_copy)]) == 1


def test_publishing_elsewhere_rewrites_only_links_and_install_cells_and_comes_back(repo_copy, capsys):
    before = _files(repo_copy)
    old = {p: nbformat.read(repo_copy / p, as_version=4) for p in before if p.suffix == ".ipynb"}
    assert cli(["release", "--root", str(repo_copy), "--repo", "alice/moe-course", "--ref", "v9.9"]) == 0
    out = capsys.readouterr().out
    assert "README.md" in out and "notebooks/00_setup_and_tour.ipynb: install cell rewritten" in out
    assert disagreements(repo_copy) == []
    assert current_address(repo_copy) == ("alice/moe-course", "v9.9")
    for path, nb in old.items():
        new = nbformat.read(repo_copy / path, as_version=4)
        assert len(new.cells) == len(nb.cells)
        for a, b in zip(nb.cells, new.cells):
            if a.source != b.source:  # the install cell, or a Markdown cell holding a Colab link
                assert "google.colab" in a.source or "colab.research.google.com" in a.source, (path, a.source)
            assert a.get("outputs") == b.get("outputs") and a.metadata == b.metadata
    text = "".join(p.read_text() for p in repo_copy.rglob("*.ipynb")) + (repo_copy / "README.md").read_text()
    assert "minimoe-course" not in text.replace("minimoe.course", "")
    assert "git+https://github.com/alice/moe-course@v9.9" in text
    # A second run changes nothing, and publishing back restores every byte.
    assert publish(repo_copy, "alice/moe-course", "v9.9") == []
    publish(repo_copy, course.GITHUB_REPO, course.GITHUB_REF)
    release(repo_copy / "solutions", repo_copy / "exercises")
    assert _files(repo_copy) == before


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("remote, expected", [
    ("git@github.com:alice/moe-course.git", "alice/moe-course"),
    ("/srv/git/minimoe.git", None),  # not on GitHub: the address stays as it is
])
def test_the_default_address_is_origins_when_origin_is_on_github(repo_copy, remote, expected):
    _git(repo_copy, "init", "-q")
    _git(repo_copy, "remote", "add", "origin", remote)
    publish(repo_copy)
    assert current_address(repo_copy) == (expected or course.GITHUB_REPO, course.GITHUB_REF)


@pytest.mark.parametrize("url, repo", [
    ("https://github.com/alice/moe-course", "alice/moe-course"),
    ("https://github.com/alice/moe-course.git", "alice/moe-course"),
    ("https://github.com/alice/moe.course/", "alice/moe.course"),
    ("https://x-access-token:abc@github.com/alice/moe-course.git\n", "alice/moe-course"),
    ("ssh://git@github.com/alice/moe-course.git", "alice/moe-course"),
    ("git@github.com:alice/moe-course.git", "alice/moe-course"),
    ("https://gitlab.com/alice/moe-course.git", None),
    ("https://github.com/alice", None),
    ("https://github.com.evil.org/alice/moe-course", None),
    ("/home/alice/minimoe", None),
])
def test_github_remote_urls(url, repo):
    assert github_repo_of(url) == repo


@pytest.mark.parametrize("bad", ["alice", "alice/moe/extra", "-alice/moe", "alice/moe.git", "", None, "alice/mo e"])
def test_bad_repos_are_refused(bad):
    with pytest.raises(ValueError, match="repo"):
        check_repo(bad)


@pytest.mark.parametrize("bad", ["", "v1..2", "-v1", "v1 2", "v1/", "v1.lock", None])
def test_bad_refs_are_refused(bad):
    with pytest.raises(ValueError, match="ref"):
        check_ref(bad)
    assert check_ref("v0.1.0") == "v0.1.0" and check_ref("a" * 40) == "a" * 40


def test_a_bad_address_on_the_command_line_is_a_clear_error(repo_copy, capsys):
    before = _files(repo_copy)
    assert cli(["release", "--root", str(repo_copy), "--repo", "not-a-repo"]) == 2
    assert "repo: got 'not-a-repo'" in capsys.readouterr().err
    assert _files(repo_copy) == before


def test_a_new_notebook_gets_an_install_cell_and_a_badge():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 11 · Something new\nWhat it is."),
                                         nbformat.v4.new_code_cell("x = 1")])
    what = publish_notebook(nb, "notebooks/11_new.ipynb", "alice/moe", "v1")
    assert what == ["install cell added before the first code cell (run `make notebooks` to store its output)",
                    "Colab badge added"]
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[1].source == course.colab_install_source("alice/moe", "v1") and nb.cells[2].source == "x = 1"
    assert nb.cells[0].source == ("# 11 · Something new\n\n[![Open in Colab](" + course.COLAB_BADGE + ")]("
                                  "https://colab.research.google.com/github/alice/moe/blob/v1/notebooks/11_new.ipynb)"
                                  "\n\nWhat it is.")
    nbformat.validate(nb)
    assert publish_notebook(nb, "notebooks/11_new.ipynb", "alice/moe", "v1") == []
