"""Start a command under resource limits: ``python -m minimoe._sandbox --memory-bytes N -- CMD...``.

The grader starts each student's kernel through this launcher. It caps the address space
(so that an allocation far beyond the limit fails inside the student's code instead of taking the
machine down), turns off core dumps, and then replaces itself with the command. The kernel
manager has already put the process in a session of its own, so the grader can stop the kernel
and everything it started with one signal to the process group. Linux and macOS only; it lives
outside ``minimoe.grading`` so that starting it does not import torch.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minimoe._sandbox")
    parser.add_argument("--memory-bytes", type=int, default=0, help="address-space limit (0: none)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")

    import resource

    if args.memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_bytes, args.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
