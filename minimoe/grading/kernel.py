"""A Jupyter kernel the grader can trust to stay in its box, and one deadline for all it does.

``KernelSession`` runs a notebook's code cells one at a time in an IPython kernel started in the
submission's sandbox (``minimoe.grading.sandbox``), speaking ZMQ over ``ipc://`` sockets in a
folder only the grader and that kernel share. Whatever a cell does, the session carries on:

- a cell that raises is recorded and the next cell runs;
- a cell that runs past its time, a cell that ends in ``MemoryError`` and a kernel that dies are
  each followed by a new kernel, in which the cells that had succeeded are run again, so later
  cells find the names they need and one failing cell costs only its own exercise;
- one wall-clock deadline covers the whole submission: starting kernels, cells, the replays after
  restarts and the checks' calls. A watchdog thread, outside the grading loop, ends the kernel the
  moment it passes (and, where no cgroup caps the memory, when the sandbox's processes together
  use more than the limit, or the shared folder grows past its cap);
- the kernel's printed output is counted as it arrives and no longer read past a cap; its raw
  stdout and stderr go through a pipe into a ``kernel.log`` outside the student's folder, of at
  most ``log_bytes``; a ZMQ message over 4 MB is refused.

``call()`` then runs one of the student's functions on inputs sent as a ``torch.save`` file, with
the exercise's package references guarded (``minimoe.grading.guard``), and reads the answer back
through ``minimoe.grading.decode``: only bounded plain data crosses back into the grader.
``kind="ranks"`` runs it on gloo ranks forked from the kernel (``minimoe.parallel.call_on_ranks``),
inside the kernel's limits and process group; ``kind="launch"`` launches a Triton kernel.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from minimoe.grading import guard
from minimoe.grading.decode import DecodeError, read_answer, shared_decoder
from minimoe.grading.registry import StudentError, short
from minimoe.grading.sandbox import Sandbox
from minimoe.grading.student import used_reference_message

MAX_MESSAGE = 4 << 20  # the largest ZMQ message the grader accepts from a kernel
GUARD_SOURCE = Path(guard.__file__).read_text(encoding="utf-8")


@dataclass
class Limits:
    timeout: float = 600.0  # seconds for the whole submission: kernels, cells, replays and checks
    cell_timeout: float = 60.0  # seconds for one cell, and for all the calls of one check together
    memory_gb: float = 4.0  # memory of the kernel and everything it starts, together
    max_restarts: int = 8
    processes: int = 256  # processes and threads in the sandbox
    file_mb: float = 256.0  # the largest file the kernel may write
    scratch_mb: float = 512.0  # size of the sandbox's private home and /tmp, each
    output_mb: float = 8.0  # printed output read from the kernel before it is no longer read
    log_mb: float = 1.0  # raw stdout/stderr kept in kernel.log
    answer_mb: float = 64.0  # the largest answer file
    calls_per_check: int = 256
    startup_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("timeout", "cell_timeout", "memory_gb", "file_mb", "scratch_mb", "output_mb", "log_mb",
                     "answer_mb", "startup_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: got {value!r}, need a positive number")
        for name, least in (("max_restarts", 0), ("processes", 16), ("calls_per_check", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: got {value!r}, need a whole number >= {least}")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 2**30)


@dataclass
class CellRun:
    """What happened to one code cell."""

    index: int
    status: str  # "ok", "error", "timeout", "died", "skipped"
    detail: str = ""


class Deadline:
    """One wall-clock deadline for a submission."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0

    def message(self) -> str:
        return f"time limit: the submission's {self.seconds:g} s ran out"


_CALL_TEMPLATE = '''
def __minimoe_call__(path_in, path_out, name, kind, protects, guard_source):
    import torch
    from minimoe.grading.student import plain
    guard = {{"__name__": "minimoe_guard"}}
    exec(guard_source, guard)
    namespace = globals()
    hits = []
    if name not in namespace:
        result = {{"status": "missing"}}
    else:
        try:
            payload = torch.load(path_in, weights_only=True)
            obj = namespace[name]
            if kind in ("call", "ranks", "launch"):
                if kind != "launch" and not callable(obj):
                    raise TypeError(f"`{{name}}` is a {{type(obj).__name__}}, not a function")
                try:
                    with guard["guarded"](protects) as hits:
                        if kind == "call":
                            value = obj(*payload["args"], **payload["kwargs"])
                        elif kind == "ranks":  # on forked gloo ranks: world, args per rank, driver
                            from minimoe.parallel import RANK_TIMEOUT_S, call_on_ranks
                            value = call_on_ranks(obj, *payload["args"], timeout_s=RANK_TIMEOUT_S)
                        else:  # "launch": a Triton kernel on a grid; the arguments come back
                            from minimoe.grading.student import launch_kernel
                            meta = dict(payload["kwargs"])
                            value = launch_kernel(obj, meta.pop("__grid__"), payload["args"], meta)
                except guard["Tripped"]:
                    value = None
            else:
                value = obj
            if hits:
                result = {{"status": "used_reference", "names": [str(h) for h in hits]}}
            else:
                try:
                    result = {{"status": "ok", "value": plain(value, "the result")}}
                except Exception as e:
                    result = {{"status": "not_plain", "error": str(e)[:300]}}
        except NotImplementedError:
            result = {{"status": "not_implemented"}}
        except BaseException as e:
            hits = list(hits) + [n for n in guard["tripped_names"](str(e)) if n not in hits]  # from forked ranks
            if hits:
                result = {{"status": "used_reference", "names": [str(h) for h in hits]}}
            else:
                result = {{"status": "raised", "error": f"{{type(e).__name__}}: {{e}}"[:500], "type": type(e).__name__}}
    torch.save(result, path_out)
__minimoe_call__({path_in!r}, {path_out!r}, {name!r}, {kind!r}, {protects!r}, {guard_source!r})
del __minimoe_call__
'''


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                parents[int(entry.name)] = ppid
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {root}
    while frontier:
        found |= frontier
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
    return found


def _rss(pids: set[int]) -> int:
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
    return total


def _tree_bytes(root: Path, max_entries: int = 10_000) -> int:
    """Bytes of the files under ``root`` (a folder with more than ``max_entries`` counts as huge)."""
    total, seen, stack = 0, 0, [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > max_entries:
                return 1 << 62
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total


class KernelSession:
    """One submission's kernel, restarted as needed, under one deadline."""

    def __init__(self, folder: Path, limits: Limits | None = None, sandbox: bool = True,
                 deadline: Deadline | None = None):
        self.folder = Path(folder)  # the grader's private folder for this submission
        self.limits = limits or Limits()
        self.deadline = deadline or Deadline(self.limits.timeout)
        self.io = self.folder / "io"
        self.io.mkdir(mode=0o700)
        work = self.folder / "work"
        work.mkdir(mode=0o700)
        self.sandbox = Sandbox(
            self.io, work, memory_bytes=self.limits.memory_bytes, processes=self.limits.processes,
            cpu_seconds=int(self.limits.timeout) + 60, file_bytes=int(self.limits.file_mb * 2**20),
            scratch_bytes=int(self.limits.scratch_mb * 2**20), enabled=sandbox)
        self._io_fd = os.open(self.io, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._log_fd = os.open(self.folder / "kernel.log",
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.log_bytes = 0
        self._log_lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.client: BlockingKernelClient | None = None
        self._context: zmq.Context | None = None
        self.cells: list[Any] = []
        self.runs: list[CellRun] = []
        self.restarts = 0
        self.starts = 0
        self.broken: dict[str, str] = {}  # functions that hung or killed the kernel: not run again
        self.notes: list[str] = []
        self.output_bytes = 0
        self.decode_seconds = 0.0  # time spent decoding answers, in the grader (not the kernel's time)
        self._reading_output = True
        self.stopped_for = ""  # why the watchdog ended the kernel, if it did
        self._stop_watch = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="minimoe-watchdog", daemon=True)
        self._watchdog.start()

    # --- the watchdog --------------------------------------------------------------------------

    def _watch(self) -> None:
        memory_cap = self.limits.memory_bytes
        io_cap = int(self.limits.answer_mb * 2**20) * 2 + (64 << 20)
        tick = 0
        while not self._stop_watch.wait(0.1):
            tick += 1
            if self.deadline.passed:
                self.stopped_for = self.deadline.message()
                self._kill()
                return
            if tick % 5:
                continue
            proc = self.proc
            if proc is None or proc.poll() is not None:
                continue
            if self.sandbox.cgroup is None:
                pids = self.sandbox.processes_alive() if self.sandbox.uid is not None else _descendants(proc.pid)
                used = _rss(pids)
                if used > memory_cap:
                    self._note(f"the kernel and its processes used {used / 2**30:.1f} GB together, more than the "
                               f"{self.limits.memory_gb:g} GB allowed; the kernel was stopped")
                    self._kill()
                    continue
            if _tree_bytes(self.io) > io_cap:
                self._note("the kernel wrote too much into the folder it shares with the grader; it was stopped")
                self._kill()

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _kill(self) -> None:
        """End the current kernel and everything in its sandbox (from any thread)."""
        proc = self.proc
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.sandbox.kill()

    # --- the kernel's life ---------------------------------------------------------------------

    def _pump_log(self, fd: int) -> None:
        cap = int(self.limits.log_mb * 2**20)
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                with self._log_lock:
                    room = cap - self.log_bytes
                    if room > 0:
                        try:
                            os.write(self._log_fd, chunk[:room])
                        except OSError:
                            pass
                    if len(chunk) > room:
                        self._note(f"the kernel wrote more than {self.limits.log_mb:g} MB to its raw stdout/stderr; "
                                   "the rest was dropped")
                    self.log_bytes = min(cap + 1, self.log_bytes + len(chunk))
        except OSError:
            pass
        finally:
            os.close(fd)

    def start(self) -> None:
        """Start a kernel in a fresh sandbox and wait until it answers."""
        if self.deadline.passed:
            raise StudentError(self.deadline.message())
        self._clear_io()  # whatever an earlier kernel left there (it is dead: nothing needs it)
        n = self.starts
        self.starts += 1
        connection = str(self.io / f"kernel-{n}.json")
        write_connection_file(connection, ip=str(self.io / f"k{n}"), transport="ipc",
                              key=uuid.uuid4().hex.encode())
        if self.sandbox.uid is not None:
            os.chown(connection, self.sandbox.uid, self.sandbox.uid)
        plan = self.sandbox.plan([sys.executable, "-m", "ipykernel_launcher", "-f", connection,
                                  "--HistoryManager.enabled=False"])
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(plan.command, stdin=subprocess.DEVNULL, stdout=write_end,
                                         stderr=write_end, env=plan.env, cwd=plan.cwd, start_new_session=True,
                                         close_fds=True, umask=0o022)
        finally:
            os.close(write_end)
        threading.Thread(target=self._pump_log, args=(read_end,), name="minimoe-kernel-log", daemon=True).start()
        self._context = zmq.Context()
        self._context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self._context.setsockopt(zmq.RCVHWM, 64)
        self._context.setsockopt(zmq.LINGER, 0)
        self._context.setsockopt(zmq.SNDTIMEO, 10_000)  # a send never blocks the grader for long
        client = BlockingKernelClient(connection_file=connection, context=self._context)
        client.load_connection_file()
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.client = client
        # A message over MAX_MESSAGE makes ZMQ drop it and the connection: these monitors tell.
        self._monitors = {name: getattr(client, f"{name}_channel").socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                          for name in ("iopub", "shell")}
        self._reading_output = self.output_bytes <= self.limits.output_mb * 2**20
        msg_id = client.kernel_info()
        end = time.monotonic() + min(self.limits.startup_timeout, max(self.deadline.remaining(), 0.1))
        while True:
            code = self.proc.poll()
            if code is not None:
                self.close_kernel()
                raise RuntimeError(f"the kernel exited as it started (status {code}): {self.log_tail()}")
            if time.monotonic() > end:
                self.close_kernel()
                if self.deadline.passed:
                    raise StudentError(self.deadline.message())
                raise RuntimeError(f"the kernel did not answer within {self.limits.startup_timeout:g} s")
            try:
                reply = client.get_shell_msg(timeout=0.1)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                break
        self._drain_output()

    def _clear_io(self) -> None:
        for entry in os.scandir(self._io_fd):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(self.io / entry.name, ignore_errors=True)
                else:
                    os.unlink(entry.name, dir_fd=self._io_fd)
            except OSError:
                pass

    def log_tail(self, n: int = 300) -> str:
        """The end of kernel.log (for the instructor, when a kernel will not start)."""
        try:
            with open(self.folder / "kernel.log", "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - n))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def close_kernel(self) -> None:
        """Stop the kernel and every process in its sandbox."""
        self._kill()
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        client, self.client = self.client, None
        if client is not None:
            try:
                client.stop_channels()
            except Exception:  # noqa: BLE001 - the sockets go with the context below
                pass
        for monitor in getattr(self, "_monitors", {}).values():
            try:
                monitor.close(linger=0)
            except zmq.ZMQError:
                pass
        self._monitors = {}
        context, self._context = self._context, None
        if context is not None:
            context.destroy(linger=0)

    def close(self) -> None:
        """Stop the kernel, the watchdog and the sandbox; nothing the notebook started survives."""
        self._stop_watch.set()
        self.close_kernel()
        self.sandbox.close()
        self._watchdog.join(timeout=10)
        for fd in (self._io_fd, self._log_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "KernelSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running code --------------------------------------------------------------------------

    def _dropped(self, channel: str) -> bool:
        """Whether ZMQ dropped a message (too large) on ``channel`` since the last look."""
        monitor = getattr(self, "_monitors", {}).get(channel)
        dropped = False
        try:
            while monitor is not None and monitor.poll(0):
                monitor.recv_multipart()
                dropped = True
        except zmq.ZMQError:
            pass
        return dropped

    def _over_output_cap(self) -> None:
        self._note(f"the notebook printed more than {self.limits.output_mb:g} MB; the rest was not read")
        client = self.client
        if client is not None:
            try:
                client.iopub_channel.socket.setsockopt(zmq.UNSUBSCRIBE, b"")
            except zmq.ZMQError:
                pass
        self._reading_output = False

    def _drain_output(self) -> None:
        """Count what the kernel printed; past the cap, stop reading it."""
        client = self.client
        if client is None or not self._reading_output:
            return
        if self._dropped("iopub"):
            self.output_bytes += MAX_MESSAGE
            self._note(f"the notebook printed more than {MAX_MESSAGE >> 20} MB at once; that output was dropped")
        channel = client.iopub_channel
        cap = self.limits.output_mb * 2**20
        if self.output_bytes > cap:
            self._over_output_cap()
            return
        for _ in range(1000):
            try:
                if not channel.msg_ready():
                    return
                msg = channel.get_msg(timeout=0)
            except (queue.Empty, zmq.ZMQError):
                return
            except Exception:  # noqa: BLE001 - a message that does not even parse
                continue
            content = msg.get("content", {})
            if msg.get("msg_type") == "stream":
                self.output_bytes += len(content.get("text", ""))
            elif msg.get("msg_type") in ("display_data", "execute_result", "update_display_data"):
                self.output_bytes += sum(len(str(v)) for v in content.get("data", {}).values())
            if self.output_bytes > cap:
                self._over_output_cap()
                return

    def _execute(self, source: str, timeout: float) -> tuple[str, str]:
        """Run ``source``; return (status, detail). Never raises for what the code does.

        Status: "ok", "error" (detail "Name: message"), "timeout", "died", "lost" (the kernel cannot be
        reached any more: a message over the size cap broke the channel), or "deadline".
        """
        client = self.client
        if client is None or self.proc is None:
            return "died", "no kernel"
        timeout = min(timeout, self.deadline.remaining())
        if timeout <= 0:
            return "deadline", self.deadline.message()
        try:
            msg_id = client.execute(source, silent=False, store_history=False, allow_stdin=False, stop_on_error=False)
        except zmq.ZMQError:
            return "lost", "the grader could no longer reach the kernel"
        end = time.monotonic() + timeout
        while True:
            self._drain_output()
            if self.proc is None or self.proc.poll() is not None:
                if self.deadline.passed:
                    return "deadline", self.deadline.message()
                return "died", "the kernel died (it crashed, ran out of memory, or exited)"
            left = end - time.monotonic()
            if left <= 0:
                if self.deadline.passed:
                    return "deadline", self.deadline.message()
                return "timeout", f"ran past its {timeout:g} s limit"
            try:
                reply = client.get_shell_msg(timeout=min(0.1, left))
            except queue.Empty:
                if self._dropped("shell"):
                    # A dying kernel also drops the connection: tell the two apart.
                    try:
                        self.proc.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        return "lost", f"the cell's reply was larger than {MAX_MESSAGE >> 20} MB and was dropped"
                continue
            except Exception:  # noqa: BLE001 - a reply that does not parse: the kernel is not well
                return "died", "the kernel sent a reply that could not be read"
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            content = reply.get("content", {})
            if content.get("status") == "ok":
                return "ok", ""
            ename, evalue = str(content.get("ename", "Error"))[:100], str(content.get("evalue", ""))[:300]
            return "error", f"{ename}: {evalue}"

    def _restart(self) -> None:
        """A new kernel, with every cell that had succeeded run again, all within the deadline."""
        while True:
            if self.deadline.passed:
                self.close_kernel()
                raise StudentError(self.deadline.message())
            if self.restarts >= self.limits.max_restarts:
                self.close_kernel()
                raise StudentError(f"the kernel had to be restarted {self.restarts} times; giving up")
            self.close_kernel()
            self.restarts += 1
            try:
                self.start()
            except StudentError:
                raise
            except Exception as e:  # noqa: BLE001 - a kernel that will not start again ends the session
                self.close_kernel()
                raise StudentError(f"the kernel could not be restarted ({type(e).__name__}: {e})") from None
            for run in self.runs:
                if run.status != "ok":
                    continue
                status, detail = self._execute(self.cells[run.index].source, self.limits.cell_timeout)
                if status == "deadline":
                    self.close_kernel()
                    raise StudentError(self.deadline.message())
                if status in ("timeout", "died", "lost") or detail.startswith("MemoryError"):
                    run.status, run.detail = "error", f"failed when run again after a restart ({detail})"
                    break
            else:
                return

    def run_notebook(self, cells: list[Any]) -> list[CellRun]:
        """Run every code cell in order within the deadline, whatever each one does."""
        self.cells = [c for c in cells if c.get("cell_type") == "code"]
        self.runs = []
        gave_up = ""
        for index, cell in enumerate(self.cells):
            if not str(cell.get("source", "")).strip():
                continue
            if gave_up or self.deadline.passed or self.client is None:
                why = gave_up or (self.deadline.message() if self.deadline.passed else "the kernel is gone")
                self.runs.append(CellRun(index, "skipped", why))
                continue
            status, detail = self._execute(str(cell.source), self.limits.cell_timeout)
            if status == "deadline":
                self.runs.append(CellRun(index, "skipped", detail))
                gave_up = detail
                continue
            self.runs.append(CellRun(index, "error" if status == "lost" else status, detail))
            if status in ("timeout", "died", "lost") or (status == "error" and detail.startswith("MemoryError")):
                try:
                    self._restart()
                except StudentError as e:
                    gave_up = str(e)
        return self.runs

    # --- calling the student's functions -------------------------------------------------------

    def _write_input(self, name: str, payload: dict) -> None:
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(payload, buffer)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=self._io_fd)
        try:
            os.write(fd, buffer.getvalue())
        finally:
            os.close(fd)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._io_fd)
        except OSError:
            pass

    def call(self, name: str, args: tuple = (), kwargs: dict | None = None, *, kind: str = "call",
             protects: tuple[str, ...] = (), timeout: float | None = None) -> Any:
        """Run the student's ``name(*args, **kwargs)`` in the kernel; return its plain result."""
        if self.deadline.passed:
            raise StudentError(self.deadline.message())
        if name in self.broken:
            raise StudentError(f"`{name}` {self.broken[name]} on an earlier check, so it is not run again")
        if self.client is None:
            raise StudentError("the notebook's kernel is gone, so nothing could be checked")
        timeout = self.limits.cell_timeout if timeout is None else timeout
        token = uuid.uuid4().hex
        name_in, name_out = f"{token}.in.pt", f"{token}.out.pt"
        try:
            self._write_input(name_in, {"args": list(args), "kwargs": dict(kwargs or {})})
            source = _CALL_TEMPLATE.format(path_in=str(self.io / name_in), path_out=str(self.io / name_out),
                                           name=name, kind=kind, protects=tuple(protects),
                                           guard_source=GUARD_SOURCE)
            status, detail = self._execute(source, timeout)
            if status == "deadline":
                raise StudentError(self.deadline.message())
            if status in ("timeout", "died", "lost"):
                limit = f"its {timeout:g} s limit" if timeout >= self.limits.cell_timeout else \
                    f"the {timeout:.1f} s this check had left"
                what = {"timeout": f"ran past {limit}", "died": "killed the kernel",
                        "lost": "cut the grader off from the kernel"}[status]
                self.broken[name] = what
                self._restart()
                raise StudentError(f"`{name}` {what}")
            try:
                data = read_answer(self._io_fd, name_out, int(self.limits.answer_mb * 2**20))
            except FileNotFoundError:
                raise StudentError(f"`{name}` gave no answer ({short(detail) if detail else 'nothing was returned'})") from None
            except DecodeError as e:
                raise StudentError(f"what `{name}` returned could not be read: {e}") from None
        finally:
            self._unlink(name_in)
            self._unlink(name_out)
        started = time.monotonic()
        try:
            result = shared_decoder().decode(data, timeout=min(timeout, self.deadline.remaining()))
        except DecodeError as e:
            self.decode_seconds += time.monotonic() - started
            if e.costly:
                self.broken[name] = "returned an answer that could not be decoded"
            raise StudentError(f"what `{name}` returned could not be read: {e}") from None
        self.decode_seconds += time.monotonic() - started
        if not isinstance(result, dict) or not isinstance(result.get("status"), str):
            raise StudentError(f"what `{name}` returned could not be read")
        status = result["status"]
        if status == "ok":
            return result.get("value")
        if status == "missing":
            raise StudentError(f"`{name}` is not defined in the notebook")
        if status == "not_implemented":
            raise StudentError(f"`{name}` is not written yet (it raises NotImplementedError)")
        if status == "used_reference":
            names = [str(n)[:100] for n in result.get("names", [])][:5] if isinstance(result.get("names"), list) else []
            raise StudentError(used_reference_message(name, names or ["a protected package function"]))
        if status == "raised":
            error = str(result.get("error", "an exception"))[:500]
            if str(result.get("type", "")) == "MemoryError":
                self.broken[name] = "ran out of memory"
                self._restart()
            raise StudentError(f"`{name}` raised {error}")
        if status == "not_plain":
            raise StudentError(f"what `{name}` returned: {str(result.get('error'))[:300]}")
        raise StudentError(f"`{name}`: {status[:50]}")


class RemoteStudent:
    """The ``Student`` adapter of the grader: every call goes to the submission's kernel.

    For one check (``for_check``) its calls share one time budget (``cell_timeout`` seconds of the
    kernel's time, not counting the grader's decoding) and a cap on their number.
    """

    def __init__(self, session: KernelSession, protects: tuple[str, ...] = (), budget: float | None = None):
        self.session = session
        self.protects = tuple(protects)
        self.budget = budget
        self.spent = 0.0
        self.calls = 0

    def for_check(self, ex: Any, chk: Any) -> "RemoteStudent":
        """The adapter for one check: its references guarded, its calls under one time budget."""
        return RemoteStudent(self.session, ex.protects, self.session.limits.cell_timeout)

    def _timeout(self) -> float | None:
        self.calls += 1
        if self.calls > self.session.limits.calls_per_check:
            raise StudentError(f"the check needed more than {self.session.limits.calls_per_check} calls")
        if self.budget is None:
            return None
        left = self.budget - self.spent
        if left <= 0:
            raise StudentError(f"this check's calls together ran past their {self.budget:g} s")
        return min(left, self.session.limits.cell_timeout)

    def _timed(self, *args: Any, **kwargs: Any) -> Any:
        started, decoding = time.monotonic(), self.session.decode_seconds
        try:
            return self.session.call(*args, **kwargs)
        finally:
            self.spent += (time.monotonic() - started) - (self.session.decode_seconds - decoding)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._timed(name, args, kwargs, protects=self.protects, timeout=self._timeout())

    def value(self, name: str) -> Any:
        return self._timed(name, kind="value", timeout=self._timeout())

    def call_on_ranks(self, name: str, world: int, args_per_rank: list, driver: str = "call") -> list:
        return self._timed(name, (world, list(args_per_rank), driver), kind="ranks",
                           protects=self.protects, timeout=self._timeout())

    def launch(self, name: str, grid: tuple[int, ...], *args: Any, **meta: Any) -> list:
        return self._timed(name, args, {**meta, "__grid__": tuple(grid)}, kind="launch",
                           protects=self.protects, timeout=self._timeout())
