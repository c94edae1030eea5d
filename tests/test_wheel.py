"""The package stands alone: built as a wheel, installed outside the checkout, it works from any folder.

`python -m build` makes the sdist and the wheel (from the sdist, as pip would). The wheel goes into
a fresh virtual environment whose only link to this one is a ``.pth`` line that lends it this
environment's site-packages, so torch is not installed again; the checkout's own editable install
is not active there (a ``.pth`` file is read only in a site folder, not in a folder one names), and
every command runs in a folder outside the checkout. There it must:

- hold the shipped checkpoints and records, byte for byte;
- import ``minimoe`` from the new environment, not from the checkout;
- run ``minimoe recipe --preset deepseek-v3``, ``minimoe generate tiny`` (a baked model, by name),
  ``minimoe grade`` on the chapter 00 solution, and one notebook, compared by nbval with its
  stored outputs.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import nbformat
import pytest

import minimoe

ROOT = Path(__file__).resolve().parent.parent
# The notebook run from the wheel: one that loads a shipped checkpoint and a shipped record.
NOTEBOOK = "notebooks/05_keeping_experts_busy.ipynb"
SHIPPED = sorted(p for p in (ROOT / "minimoe" / "checkpoints").iterdir()
                 if p.suffix in (".pt", ".json") or p.name == "README.md")

pytestmark = pytest.mark.install


def _run(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = _run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels, sdists = list(out.glob("minimoe-*.whl")), list(out.glob("minimoe-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """(python, folder): the new environment's interpreter and a work folder outside the checkout."""
    env_dir = tmp_path_factory.mktemp("wheel-venv")
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    env_dir.chmod(0o755)  # as `python -m venv` leaves it (pytest makes 0700 folders): the sandbox's uid reads it
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=env_dir).stdout.strip()
    lent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_lent_from_the_test_environment.pth").write_text("\n".join(sorted(lent)) + "\n")
    proc = _run([python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", dist[0]], cwd=env_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path_factory.mktemp("elsewhere")
    return python, work


def test_wheel_and_sdist_hold_the_package_and_its_shipped_data(dist):
    wheel, sdist = dist
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for path in SHIPPED:
            name = f"minimoe/checkpoints/{path.name}"
            assert name in names, f"{name} is not in the wheel: check [tool.setuptools.package-data]"
            assert z.read(name) == path.read_bytes(), f"{name} in the wheel differs from the checkout's"
        modules = {str(p.relative_to(ROOT)).replace(os.sep, "/") for p in (ROOT / "minimoe").rglob("*.py")}
        assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
        assert not any(n.startswith(("tests/", "notebooks/", "solutions/")) for n in names)
        metadata = z.read(f"minimoe-{minimoe.__version__}.dist-info/METADATA").decode()
    assert re.search(rf"^Version: {re.escape(minimoe.__version__)}$", metadata, re.M), "pyproject and __version__ differ"
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {f"minimoe/checkpoints/{p.name}" for p in SHIPPED} <= names
    assert {"pyproject.toml", "README.md", "LICENSE"} <= names


def test_the_installed_package_is_the_wheels_not_the_checkouts(installed):
    python, work = installed
    proc = _run([python, "-c", "import minimoe, minimoe.course as c; print(minimoe.__file__); print(c.baked_path('tiny'))"],
                cwd=work)
    assert proc.returncode == 0, proc.stderr
    package, checkpoint = (Path(line) for line in proc.stdout.split())
    prefix = Path(python).parent.parent.resolve()
    assert prefix in package.resolve().parents and ROOT not in package.resolve().parents
    assert prefix in checkpoint.resolve().parents


def test_recipe_from_any_folder(installed):
    python, work = installed
    proc = _run([Path(python).parent / "minimoe", "recipe", "--preset", "deepseek-v3"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "2.788M" in proc.stdout and "$5.576M" in proc.stdout, proc.stdout


def test_generate_with_a_baked_model_from_any_folder(installed):
    python, work = installed
    proc = _run([Path(python).parent / "minimoe", "generate", "tiny", "--prompt", "12+34=", "--max-new-tokens", "8"],
                cwd=work)
    assert proc.returncode == 0, proc.stderr
    here = _run([sys.executable, "-m", "minimoe.cli", "generate", "tiny", "--prompt", "12+34=", "--max-new-tokens", "8"],
                cwd=work)
    assert proc.stdout == here.stdout and proc.stdout.startswith("12+34="), (proc.stdout, here.stdout)


def test_grade_the_chapter_00_solution_from_any_folder(installed):
    python, work = installed
    folder = work / "grade"
    folder.mkdir()
    shutil.copy(ROOT / "solutions" / "00_setup_and_tour.ipynb", folder)
    proc = _run([Path(python).parent / "minimoe", "grade", "00_setup_and_tour.ipynb", "--chapter", "00", "--out", "graded"],
                cwd=folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"\(chapter 00\): (\S+)/\1 points", proc.stdout), proc.stdout
    assert (folder / "graded" / "00_setup_and_tour" / "results.json").is_file()


def test_a_notebook_from_any_folder_gives_its_stored_outputs(installed):
    python, work = installed
    code = "\n".join(c.source for c in nbformat.read(ROOT / NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    assert "baked(" in code and "summary(" in code, f"{NOTEBOOK} no longer loads shipped data: pick another"
    folder = work / "notebook"
    folder.mkdir()
    shutil.copy(ROOT / NOTEBOOK, folder)
    shutil.copy(ROOT / "tests" / "sanitize.cfg", folder)
    proc = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                 "--nbval-sanitize-with", "sanitize.cfg", Path(NOTEBOOK).name], cwd=folder)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout)
