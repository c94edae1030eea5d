"""Every widget the course builds works under Colab's ipywidgets (7.7.1) as well as under ipywidgets 8.

Colab ships ipywidgets 7.7.1 and renders its widgets with its own front end; `make lab` installs
ipywidgets 8. What can break between them is the Python API the course calls (names, traits,
``interactive_output``, ``Output`` capture, ``observe``), so these tests run that code, in a real
kernel, under both versions:

- every lecture and solution notebook that builds a widget is executed from top to bottom;
- then one more cell moves every slider and dropdown it made, which runs the callbacks, and
  fails on any error, including one an ``Output`` widget would otherwise just display;
- that cell also draws a ``tqdm.auto`` bar, the progress bar ``minimoe.train`` shows.

ipywidgets 7.7.1 is installed once, without its dependencies (its front-end packages play no
part in a kernel), into pytest's cache folder, and put first on the kernel's ``PYTHONPATH``:
everything else (torch, ipykernel, minimoe) is this environment's own.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
COLAB_IPYWIDGETS = "7.7.1"
# ipywidgets 7 imports ipython_genutils, which newer IPython no longer brings along.
COLAB_PACKAGES = [f"ipywidgets=={COLAB_IPYWIDGETS}", "ipython_genutils==0.2.0"]


def widget_builders() -> set[str]:
    """Names of the package's functions that import ipywidgets: the widgets the package builds."""
    names = set()
    for path in (ROOT / "minimoe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    imported = [a.name for a in inner.names] if isinstance(inner, ast.Import) else \
                        [inner.module or ""] if isinstance(inner, ast.ImportFrom) else []
                    if any(m.split(".")[0] == "ipywidgets" for m in imported):
                        names.add(node.name)
    return names


def _code(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def widget_notebooks() -> list[Path]:
    """Lecture and solution notebooks that import ipywidgets or call a widget builder of the package."""
    builders = widget_builders()
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb")):
        code = _code(path)
        if "ipywidgets" in code or any(f"{name}(" in code for name in builders):
            found.append(path)
    return found


def test_every_widget_the_package_builds_is_shown_in_a_notebook():
    builders = widget_builders()
    assert builders, "no widget builder found in minimoe/: has the scan stopped working?"
    code = "\n".join(_code(p) for p in widget_notebooks())
    for name in builders:
        assert f"{name}(" in code, f"{name} builds a widget that no notebook shows, so no test builds it under ipywidgets 7"


# Moves every value widget once (a different option, the other end of a slider) and records every
# traceback the kernel would show: an error inside `with output:` is displayed, not raised.
POKE = """
import json, ipywidgets
from ipywidgets.widgets import widget as _widget_module
_errors = []
_ip = get_ipython()
_ip.showtraceback = lambda *args, **kwargs: _errors.append(repr(args)[:2000])
_registry = getattr(_widget_module, "_instances", None) or ipywidgets.Widget.widgets  # 8, then 7
_moved = []
for _w in list(_registry.values()):
    if getattr(_w, "disabled", False):
        continue
    if hasattr(_w, "options") and hasattr(_w, "index") and len(_w.options) > 1:
        _w.index = (_w.index + 1) % len(_w.options)
    elif all(hasattr(_w, t) for t in ("value", "min", "max")):
        _w.value = _w.min if _w.value != _w.min else _w.max
    else:
        continue
    _moved.append(type(_w).__name__)
from tqdm.auto import tqdm
from tqdm.notebook import tqdm_notebook
_bar = tqdm(total=2, desc="training", unit="step", dynamic_ncols=True)
_bar.update(2)
_bar.close()
print(json.dumps({"version": ipywidgets.__version__, "moved": _moved, "errors": _errors,
                  "bar": isinstance(_bar, tqdm_notebook) and isinstance(_bar.container, ipywidgets.HBox)}))
"""


@pytest.fixture(scope="module")
def colab_ipywidgets(request):
    """A folder holding ipywidgets 7.7.1 (cached across runs in pytest's cache)."""
    folder = Path(request.config.cache.mkdir(f"ipywidgets-{COLAB_IPYWIDGETS}"))
    if not (folder / "ipywidgets" / "__init__.py").is_file():
        staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                               "--target", str(staging), *COLAB_PACKAGES], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"could not install {COLAB_PACKAGES} from the package index:\n{proc.stderr[-2000:]}"
        folder.rmdir() if folder.exists() and not any(folder.iterdir()) else None
        staging.replace(folder)
    return folder


def _run_with_widgets(path: Path, pythonpath: str | None, monkeypatch) -> tuple[nbformat.NotebookNode, dict]:
    if pythonpath is not None:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([pythonpath] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(POKE))
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    report = json.loads(nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
    return nb, report


@pytest.mark.parametrize("version", [pytest.param(COLAB_IPYWIDGETS, marks=pytest.mark.install), "installed"])
@pytest.mark.parametrize("path", widget_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_widgets_build_and_respond(path, version, request, monkeypatch):
    folder = str(request.getfixturevalue("colab_ipywidgets")) if version == COLAB_IPYWIDGETS else None
    nb, report = _run_with_widgets(path, folder, monkeypatch)
    if version == COLAB_IPYWIDGETS:
        assert report["version"] == COLAB_IPYWIDGETS
    else:
        import ipywidgets

        assert report["version"] == ipywidgets.__version__
    views = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the notebook displayed no widget"
    assert report["moved"], "no slider or dropdown to move"
    assert report["errors"] == [], "\n".join(report["errors"])
    assert report["bar"], "tqdm.auto did not draw its notebook (widget) progress bar"


def test_widget_notebooks_are_found():
    names = {p.name for p in widget_notebooks()}
    assert {"01_the_recipe.ipynb", "04_experts_and_the_router.ipynb"} <= names
