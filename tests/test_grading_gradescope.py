"""Gradescope: the autograder zip, run the way Gradescope runs it, in a tree with its layout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

from grading_helpers import SOLUTION


def test_the_bundle_grades_a_submission_like_gradescope(tmp_path):
    out = tmp_path / "bundle"
    made = subprocess.run([sys.executable, "-m", "minimoe.cli", "grade", "--gradescope-bundle", "00",
                           "--out", str(out), "--timeout", "300", "--cell-timeout", "60"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    bundle = out / "autograder.zip"
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
        config = json.loads(z.read("minimoe-assignment.json"))
        z.extractall(tmp_path / "autograder" / "source")
    assert {"setup.sh", "run_autograder", "minimoe-assignment.json", "package/pyproject.toml",
            "package/minimoe/grading/grader.py", "package/minimoe/grading/checks/ch00.py"} <= set(names)
    assert modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    assert not [n for n in names if "solutions" in n or n.endswith(".ipynb") or "__pycache__" in n]
    assert config == {"chapter": "00", "timeout": 300.0, "cell_timeout": 60.0, "memory_gb": 4.0, "sandbox": True}

    root = tmp_path / "autograder"
    source = root / "source"
    for script in ("setup.sh", "run_autograder"):
        assert subprocess.run(["bash", "-n", str(source / script)]).returncode == 0
    (root / "submission").mkdir()
    shutil.copy(SOLUTION, root / "submission" / "my homework.ipynb")
    env = dict(os.environ, MINIMOE_AUTOGRADER_ROOT=str(root), MINIMOE_AUTOGRADER_PYTHON=sys.executable,
               PYTHONPATH=str(source / "package"))  # the bundled package, not this checkout's
    os.chmod(source / "run_autograder", 0o755)
    run = subprocess.run([str(source / "run_autograder")], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    assert f"from {source / 'package' / 'minimoe'}" in run.stdout and "graded my homework.ipynb" in run.stdout
    report = json.loads((root / "results" / "results.json").read_text())
    assert (report["score"], report["max_score"]) == (6, 6)
    assert report["stdout_visibility"] == "hidden"
    assert all(t["visibility"] == "visible" and t["status"] == "passed" for t in report["tests"])
    assert report["extra_data"]["sandbox"].startswith("bubblewrap")

    shutil.rmtree(root / "submission")
    (root / "submission").mkdir()
    run = subprocess.run([str(source / "run_autograder")], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads((root / "results" / "results.json").read_text())
    assert report["score"] == 0 and "No .ipynb" in report["output"]
