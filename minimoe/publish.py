"""Where the course is published: one address for every Colab link and every install cell.

A workshop opens the notebooks from their "Open in Colab" badges, and each notebook's first code
cell installs ``minimoe`` on Colab. Both must point at the same GitHub repository and the same
tag (or commit), or a notebook and its package drift apart mid-session. The address lives in two
lines of ``minimoe/course.py`` (``GITHUB_REPO``, ``GITHUB_REF``); ``publish`` writes it there and
into everything made from it:

- the Colab badge (and any other Colab link) in the lecture and solution notebooks;
- the first code cell of those notebooks, the Colab install cell (``course.colab_install_source``);
- the README's course map and any other Colab link or ``git+https`` install line in the README.

It touches nothing else in a notebook, so it can be re-run after other edits, and it is
idempotent: a second run changes nothing. ``exercises/`` are written from ``solutions/`` by
``minimoe.grading.release`` afterwards (``minimoe release`` runs both). ``disagreements`` lists
every link that does not match the address, for ``minimoe release --check`` and the tests.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nbformat

from minimoe import course

# The folders whose notebooks carry badges and install cells, and the folder each one's badge opens:
# a student opens the exercise that is written from a solution, never the solution itself.
PUBLISHED = {"notebooks": "notebooks", "solutions": "exercises", "exercises": "exercises"}
SOURCES = ("notebooks", "solutions")  # exercises/ are generated from solutions/

COURSE_FILE = Path("minimoe") / "course.py"
MAP_START, MAP_END = "<!-- course-map:start -->", "<!-- course-map:end -->"

_REPO = r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}"
_REF = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
COLAB_LINK = re.compile(rf"https://colab\.research\.google\.com/github/(?P<repo>{_REPO})/blob/(?P<ref>[^/\s)\"']+)/"
                        r"(?P<path>[^\s)\"'\\]+)")
BADGE = re.compile(r"\[!\[Open in Colab\]\(" + re.escape(course.COLAB_BADGE) + r"\)\]\((?P<url>[^)\s]*)\)")
INSTALL_URL = re.compile(rf"git\+https://github\.com/(?P<repo>{_REPO}?)(?:\.git)?@(?P<ref>[^\s'\"\\]+)")
_CONSTANT = re.compile(r'^(?P<name>GITHUB_REPO|GITHUB_REF) = "(?P<value>[^"]*)"$', re.M)
_REMOTE = re.compile(rf"^(?:(?:https?|git|ssh)://(?:[^@/]+@)?github\.com(?::\d+)?/|git@github\.com:)(?P<repo>{_REPO}?)"
                     r"(?:\.git)?/?$")


class PublishError(ValueError):
    """The repository cannot be published as asked (a bad address, a file that is not where it must be)."""


def check_repo(repo: str) -> str:
    """``repo`` if it is a GitHub ``OWNER/NAME``, else ValueError naming it."""
    if not isinstance(repo, str) or not re.fullmatch(_REPO, repo) or repo.endswith(".git"):
        raise ValueError(f"repo: got {repo!r}, need a GitHub repository as OWNER/NAME")
    return repo


def check_ref(ref: str) -> str:
    """``ref`` if it is a tag, branch or commit name git accepts, else ValueError naming it."""
    if (not isinstance(ref, str) or not re.fullmatch(_REF, ref) or ".." in ref or "//" in ref
            or ref.endswith((".", "/", ".lock"))):
        raise ValueError(f"ref: got {ref!r}, need a git tag or commit such as v0.1.0")
    return ref


def github_repo_of(url: str) -> str | None:
    """``OWNER/NAME`` of a GitHub remote URL (https, ssh or scp-like), or None for any other URL."""
    m = _REMOTE.match(url.strip())
    return m.group("repo") if m else None


def origin_repo(root: str | Path = ".") -> str | None:
    """The GitHub repository ``git remote get-url origin`` names in ``root``, or None."""
    try:
        out = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return github_repo_of(out.stdout) if out.returncode == 0 else None


def current_address(root: str | Path = ".") -> tuple[str, str]:
    """``(GITHUB_REPO, GITHUB_REF)`` as written in ``root``'s ``minimoe/course.py``."""
    values = dict((m.group("name"), m.group("value")) for m in _CONSTANT.finditer(_course_text(root)))
    if set(values) != {"GITHUB_REPO", "GITHUB_REF"}:
        raise PublishError(f"{Path(root) / COURSE_FILE}: needs the lines GITHUB_REPO = \"...\" and GITHUB_REF = \"...\"")
    return values["GITHUB_REPO"], values["GITHUB_REF"]


def _course_text(root: str | Path) -> str:
    path = Path(root) / COURSE_FILE
    if not path.is_file():
        raise PublishError(f"{path} does not exist: run this from the course repository's root")
    return path.read_text(encoding="utf-8")


# --- one notebook --------------------------------------------------------------------------------

def published_path(path: str | Path) -> str:
    """The path (relative to the repository) a notebook's Colab badge opens: ``solutions/X`` -> ``exercises/X``."""
    path = Path(path)
    folder = PUBLISHED.get(path.parent.name)
    if folder is None:
        raise ValueError(f"path: got {str(path)!r}, need a notebook in one of {', '.join(PUBLISHED)}")
    return f"{folder}/{path.name}"


def is_install_cell(cell) -> bool:
    return cell.cell_type == "code" and "google.colab" in cell.source


def _relink(text: str, repo: str, ref: str, own: str | None) -> str:
    """``text`` with every Colab link and install URL at ``repo``/``ref``; badges open ``own``."""
    if own is not None:
        text = BADGE.sub(lambda m: f"[![Open in Colab]({course.COLAB_BADGE})]({course.colab_url(own, repo, ref)})", text)
    text = COLAB_LINK.sub(lambda m: course.colab_url(m.group("path"), repo, ref), text)
    return INSTALL_URL.sub(lambda m: f"git+https://github.com/{repo}@{ref}", text)


def _new_cell(nb: nbformat.NotebookNode, cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``cell`` ready to go into ``nb``: with an id only where the notebook's format has ids."""
    if nb.get("nbformat_minor", 0) < 5:
        cell.pop("id", None)
    return cell


def publish_notebook(nb: nbformat.NotebookNode, own: str, repo: str, ref: str) -> list[str]:
    """Point ``nb``'s install cell and Colab links at ``repo``/``ref``, in place; say what changed.

    ``own`` is the path its badge opens (see ``published_path``). Only the first code cell (the
    install cell, added when missing) and the Colab links in Markdown cells are touched; a notebook
    without a badge gets one under the title of its first Markdown cell.
    """
    changes: list[str] = []
    install = course.colab_install_source(repo, ref)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if code and is_install_cell(code[0]):
        if code[0].source != install:
            code[0].source = install
            changes.append("install cell rewritten")
    else:
        where = nb.cells.index(code[0]) if code else len(nb.cells)
        nb.cells.insert(where, _new_cell(nb, nbformat.v4.new_code_cell(install)))
        changes.append("install cell added before the first code cell (run `make notebooks` to store its output)")
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    for cell in markdown:
        new = _relink(cell.source, repo, ref, own)
        if new != cell.source:
            cell.source = new
            changes.append("Colab link rewritten")
    if not any(BADGE.search(c.source) for c in markdown):
        badge = f"[![Open in Colab]({course.COLAB_BADGE})]({course.colab_url(own, repo, ref)})"
        if markdown and markdown[0].source.startswith("#"):
            title, _, rest = markdown[0].source.partition("\n")
            rest = rest.strip("\n")
            markdown[0].source = f"{title}\n\n{badge}" + (f"\n\n{rest}" if rest else "")
        else:
            nb.cells.insert(0, _new_cell(nb, nbformat.v4.new_markdown_cell(badge)))
        changes.append("Colab badge added")
    return sorted(set(changes), key=changes.index)


# --- the whole repository ------------------------------------------------------------------------

def readme_text(text: str, root: str | Path, repo: str, ref: str) -> str:
    """The README with its course map regenerated and every Colab link and install URL at ``repo``/``ref``."""
    pattern = re.compile(re.escape(MAP_START) + r".*?" + re.escape(MAP_END), re.S)
    if not pattern.search(text):
        raise PublishError(f"README.md has no {MAP_START} ... {MAP_END} block for the course map")
    text = pattern.sub(lambda _: f"{MAP_START}\n{course.course_map(root, repo=repo, ref=ref)}\n{MAP_END}", text)
    return _relink(text, repo, ref, None)


@dataclass
class Change:
    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def publish(root: str | Path = ".", repo: str | None = None, ref: str | None = None,
            check_only: bool = False) -> list[Change]:
    """Point every Colab link and install cell of the repository at ``root`` to ``repo``/``ref``.

    ``repo`` defaults to the GitHub repository of ``git remote get-url origin``, else to the
    current ``GITHUB_REPO``; ``ref`` defaults to the current ``GITHUB_REF``. With ``check_only``
    nothing is written. Returns what changed (or would change), one entry per file.
    """
    from minimoe.grading.release import render

    root = Path(root)
    old_repo, old_ref = current_address(root)
    repo = check_repo(repo if repo is not None else origin_repo(root) or old_repo)
    ref = check_ref(ref if ref is not None else old_ref)
    changes: list[Change] = []

    text = _course_text(root)
    new = _CONSTANT.sub(lambda m: f'{m.group("name")} = "{repo if m.group("name") == "GITHUB_REPO" else ref}"', text)
    if new != text:
        changes.append(Change(COURSE_FILE, f"GITHUB_REPO, GITHUB_REF = {repo!r}, {ref!r} (were {old_repo!r}, {old_ref!r})"))
        if not check_only:
            _write(root / COURSE_FILE, new)

    for folder in SOURCES:
        for path in sorted((root / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            what = publish_notebook(nb, published_path(path), repo, ref)
            if what:
                changes.append(Change(path.relative_to(root), "; ".join(what)))
                if not check_only:
                    _write(path, render(nb))

    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = readme_text(text, root, repo, ref)
    if new != text:
        changes.append(Change(Path("README.md"), "course map and Colab links rewritten"))
        if not check_only:
            _write(readme, new)
    return changes


def _texts(nb: nbformat.NotebookNode):
    """(where, text) for every cell source and every text output of a notebook."""
    for i, cell in enumerate(nb.cells):
        yield f"cell {i}", cell.source, cell.cell_type == "markdown"
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                yield f"cell {i} output", out.get("text", ""), False
            for mime, data in out.get("data", {}).items():
                if mime.startswith("text/"):
                    yield f"cell {i} output", data if isinstance(data, str) else "".join(data), False


def disagreements(root: str | Path = ".") -> list[str]:
    """Every Colab link, badge and install URL of the repository that does not match ``course.py``.

    Looks at the README (and every other Markdown file at the top and in ``benchmarks/``), and at
    every cell and text output of the notebooks in ``notebooks/``, ``solutions/`` and
    ``exercises/``: a Colab link must name ``GITHUB_REPO`` at ``GITHUB_REF`` and a file that
    exists; a notebook's badge must open that notebook (its exercise, for a solution); an install
    URL must name the same repository and ref; a notebook's first code cell must be the install cell.
    """
    root = Path(root)
    repo, ref = current_address(root)
    problems: list[str] = []

    def look(where: str, text: str, own: str | None = None) -> None:
        for m in COLAB_LINK.finditer(text):
            if (m.group("repo"), m.group("ref")) != (repo, ref):
                problems.append(f"{where}: Colab link to {m.group('repo')}@{m.group('ref')}, not {repo}@{ref}")
            if not (root / m.group("path")).is_file():
                problems.append(f"{where}: Colab link to {m.group('path')}, which does not exist")
        for m in INSTALL_URL.finditer(text):
            if (m.group("repo"), m.group("ref")) != (repo, ref):
                problems.append(f"{where}: installs {m.group('repo')}@{m.group('ref')}, not {repo}@{ref}")
        if own is not None:
            for m in BADGE.finditer(text):
                if m.group("url") != course.colab_url(own, repo, ref):
                    problems.append(f"{where}: Colab badge opens {m.group('url')}, not {course.colab_url(own, repo, ref)}")

    for md in sorted(root.glob("*.md")) + sorted(root.glob("benchmarks/*.md")):
        look(str(md.relative_to(root)), md.read_text(encoding="utf-8"))
    for folder in PUBLISHED:
        for path in sorted((root / folder).glob("*.ipynb")):
            rel = path.relative_to(root)
            nb = nbformat.read(path, as_version=4)
            own = published_path(rel)
            for where, text, is_markdown in _texts(nb):
                look(f"{rel}, {where}", text, own if is_markdown else None)
            if not any(BADGE.search(c.source) for c in nb.cells if c.cell_type == "markdown"):
                problems.append(f"{rel}: no Colab badge")
            code = [c for c in nb.cells if c.cell_type == "code"]
            if not code or code[0].source != course.colab_install_source(repo, ref):
                problems.append(f"{rel}: the first code cell is not the Colab install cell for {repo}@{ref}")
    return problems
