"""The two small steps that start a student's kernel: ``python -I minimoe/_sandbox.py STEP [options] -- CMD...``.

``minimoe.grading.sandbox`` builds the whole command; this module only runs its steps, and it
imports nothing heavy (no torch), so each step costs a few tens of milliseconds.

- ``enter`` runs outside the sandbox, as the grader's user. It moves itself into the submission's
  cgroups (``--cgroup-procs FILE``, one per hierarchy), so that every process the kernel ever
  starts is counted against the memory and process limits, then replaces itself with ``bwrap``.
- ``limit`` runs inside the sandbox. It sets the resource limits (address space, processes, CPU
  seconds, file size, no core dumps), makes writes past the file-size limit fail instead of
  killing the writer, gives up root for ``--uid``/``--gid`` when it is root, and replaces itself
  with the kernel. Without ``--uid`` (an unprivileged user namespace, or ``--no-sandbox``) it
  changes no identity.

Linux and macOS only (macOS runs only the ``limit`` step, unsandboxed, and ignores RLIMIT_AS).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4


def _prctl(option: int, value: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to set
        pass


def enter(cgroup_procs: list[str], command: list[str]) -> None:
    for path in cgroup_procs:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    os.execv(command[0], command)


def _setrlimit(which: int, value: int) -> None:
    import resource

    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def limit(args: argparse.Namespace, command: list[str]) -> None:
    import resource

    if args.home and args.uid is not None and os.geteuid() == 0:
        os.chown(args.home, args.uid, args.gid)
    if args.memory_bytes > 0:
        _setrlimit(resource.RLIMIT_AS, args.memory_bytes)
    if args.processes > 0:
        _setrlimit(resource.RLIMIT_NPROC, args.processes)
    if args.cpu_seconds > 0:
        soft = args.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))
    if args.file_bytes > 0:
        _setrlimit(resource.RLIMIT_FSIZE, args.file_bytes)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    _setrlimit(resource.RLIMIT_CORE, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if args.uid is not None:
        os.setgroups([])
        os.setresgid(args.gid, args.gid, args.gid)
        os.setresuid(args.uid, args.uid, args.uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - would mean root could be taken back
            raise SystemExit("minimoe._sandbox: could not give up root")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    os.execv(command[0], command)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("python -m minimoe._sandbox: no command to run (put it after --)")
    cut = argv.index("--")
    options, command = argv[:cut], argv[cut + 1:]
    if not command:
        raise SystemExit("python -m minimoe._sandbox: no command to run (put it after --)")
    parser = argparse.ArgumentParser(prog="python -m minimoe._sandbox")
    parser.add_argument("step", nargs="?", choices=("enter", "limit"), default="limit")
    parser.add_argument("--cgroup-procs", action="append", default=[], help="cgroup.procs file to join (enter)")
    parser.add_argument("--memory-bytes", type=int, default=0, help="address-space limit of each process (0: none)")
    parser.add_argument("--processes", type=int, default=0, help="processes and threads of the uid (0: no limit)")
    parser.add_argument("--cpu-seconds", type=int, default=0, help="CPU seconds of each process (0: no limit)")
    parser.add_argument("--file-bytes", type=int, default=0, help="largest file a process may write (0: no limit)")
    parser.add_argument("--uid", type=int, default=None, help="unprivileged uid to become (when root)")
    parser.add_argument("--gid", type=int, default=None)
    parser.add_argument("--home", default=None, help="home folder to hand to --uid")
    args = parser.parse_args(options)
    if (args.uid is None) != (args.gid is None):
        parser.error("--uid and --gid go together")
    if args.step == "enter":
        enter(args.cgroup_procs, command)
    else:
        limit(args, command)


if __name__ == "__main__":
    main()
