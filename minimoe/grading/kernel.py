"""A Jupyter kernel the grader can trust to stay in its box.

``KernelSession`` runs a notebook's code cells one at a time through nbclient, in a kernel started
by ``minimoe._sandbox`` (its own process group, an address-space limit) with the submission's
temporary folder as its working directory. Whatever a cell does, the session carries on:

- a cell that raises is recorded and the next cell runs;
- a cell that runs past its time is interrupted; if the interrupt does not stop it, the kernel
  is restarted;
- a kernel that dies (``os._exit``, a crash) is restarted, and the cells that had succeeded are
  run again so later cells find the names they need.

``call()`` then runs one of the student's functions on inputs sent as a ``torch.save`` file and
reads the answer back with ``torch.load(weights_only=True)``: only tensors, numbers, strings and
containers of them cross back into the grader. ``kind="ranks"`` runs it on gloo ranks forked from
the kernel (``minimoe.parallel.call_on_ranks``), inside the kernel's limits and process group.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import torch
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from traitlets import Integer

from minimoe.grading.registry import StudentError


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is this Python's ipykernel, started under resource limits."""

    memory_bytes = Integer(0, help="address-space limit of the kernel process (0: none)").tag(config=True)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return [
            sys.executable, "-m", "minimoe._sandbox", "--memory-bytes", str(self.memory_bytes), "--",
            sys.executable, "-m", "ipykernel_launcher", "-f", os.path.realpath(self.connection_file),
            *(extra_arguments or []),
        ]


@dataclass
class CellRun:
    """What happened to one code cell."""

    index: int
    status: str  # "ok", "error", "timeout", "died", "skipped"
    detail: str = ""


@dataclass
class Limits:
    timeout: float = 600.0  # seconds for running the whole notebook
    cell_timeout: float = 60.0  # seconds for one cell or one check's call
    memory_gb: float = 4.0  # address space of the kernel
    max_restarts: int = 8

    def __post_init__(self) -> None:
        for name in ("timeout", "cell_timeout", "memory_gb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: got {value!r}, need a positive number")


_TIMEOUT = "MinimoeCellTimeout"

_CALL_TEMPLATE = '''
def __minimoe_call__(path_in, path_out, name, kind):
    import torch
    from minimoe.grading.student import plain
    namespace = globals()
    if name not in namespace:
        result = {{"status": "missing"}}
    else:
        try:
            payload = torch.load(path_in, weights_only=True)
            obj = namespace[name]
            if kind in ("call", "ranks"):
                if not callable(obj):
                    raise TypeError(f"`{{name}}` is a {{type(obj).__name__}}, not a function")
            if kind == "call":
                value = obj(*payload["args"], **payload["kwargs"])
            elif kind == "ranks":  # on forked gloo ranks: world, args per rank, driver
                from minimoe.parallel import RANK_TIMEOUT_S, call_on_ranks
                value = call_on_ranks(obj, *payload["args"], timeout_s=RANK_TIMEOUT_S)
            elif kind == "launch":
                from minimoe.grading.student import launch_kernel
                meta = dict(payload["kwargs"])
                value = launch_kernel(obj, meta.pop("__grid__"), payload["args"], meta)
            else:
                value = obj
            try:
                result = {{"status": "ok", "value": plain(value, "the result")}}
            except Exception as e:
                result = {{"status": "not_plain", "error": str(e)}}
        except NotImplementedError:
            result = {{"status": "not_implemented"}}
        except Exception as e:
            result = {{"status": "raised", "error": f"{{type(e).__name__}}: {{e}}"[:500]}}
    torch.save(result, path_out)
__minimoe_call__({path_in!r}, {path_out!r}, {name!r}, {kind!r})
del __minimoe_call__
'''


@dataclass
class KernelSession:
    workdir: Path
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.client: NotebookClient | None = None
        self.cells: list[nbformat.NotebookNode] = []
        self.runs: list[CellRun] = []
        self.restarts = 0
        self.broken: dict[str, str] = {}  # functions that hung or killed the kernel: not run again
        self.io = self.workdir / ".minimoe-io"
        self.io.mkdir(exist_ok=True)

    # --- the kernel's life ---------------------------------------------------------------------

    def start(self) -> None:
        km = SandboxedKernelManager(kernel_name="python3", memory_bytes=int(self.limits.memory_gb * 2**30))
        self.client = NotebookClient(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")]),
            km=km,
            timeout=max(1, int(self.limits.cell_timeout)),
            allow_errors=True,
            # On a timeout nbclient interrupts the kernel and ends the cell with this error, so its
            # listeners stop cleanly; _recover() restarts the kernel if the interrupt did not work.
            interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMEOUT, "evalue": "", "traceback": []},
            on_cell_error=self._note_error,
            record_timing=False,
            startup_timeout=120,
            shutdown_kernel="immediate",
        )
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("MPLBACKEND", "Agg")
        env["MINIMOE_GRADING"] = "1"
        # The kernel's own log lines (and anything written straight to fd 1/2) go to a file in the
        # submission's folder, not into the grader's output.
        self._log = open(self.workdir / "kernel.log", "ab")  # noqa: SIM115 - closed in close()
        self.client.start_new_kernel(cwd=str(self.workdir), env=env, stdout=self._log, stderr=self._log)
        self.client.start_new_kernel_client()

    def close(self) -> None:
        """Stop the kernel and every process it started."""
        client, self.client = self.client, None
        if client is None or client.km is None:
            return
        pgid = None
        provisioner = getattr(client.km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        if process is not None:
            try:
                pgid = os.getpgid(process.pid)
            except OSError:
                pgid = None
        try:
            client._cleanup_kernel()
        except Exception:  # noqa: BLE001 - the kernel may be gone already; the kill below is what counts
            pass
        if pgid is not None and pgid != os.getpgid(0):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def _restart(self) -> None:
        """A new kernel, with every cell that had succeeded run again."""
        self.close()
        self.restarts += 1
        self.start()
        for run in self.runs:
            if run.status == "ok":
                self._execute(self.cells[run.index].source, self.limits.cell_timeout)

    def __enter__(self) -> "KernelSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running code --------------------------------------------------------------------------

    def _note_error(self, cell: nbformat.NotebookNode, cell_index: int, execute_reply: dict) -> None:
        self._last_error = execute_reply.get("content", {})

    def _execute(self, source: str, timeout: float) -> tuple[str, str, list]:
        """Run ``source``; return (status, detail, outputs). Never raises for what the code does."""
        assert self.client is not None, "start() the session first"
        cell = nbformat.v4.new_code_cell(source)
        self.client.timeout = max(1, int(timeout))
        self._last_error: dict = {}
        try:
            self.client.execute_cell(cell, 0, store_history=False)
        except CellTimeoutError:
            return "timeout", f"ran past its {timeout:g} s limit", cell.outputs
        except DeadKernelError:
            return "died", "the kernel died (it crashed, ran out of memory, or exited)", cell.outputs
        if self._last_error.get("ename") == _TIMEOUT:
            return "timeout", f"ran past its {timeout:g} s limit", cell.outputs
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        if errors:
            e = errors[-1]
            return "error", f"{e.get('ename', 'Error')}: {e.get('evalue', '')}"[:300], cell.outputs
        return "ok", "", cell.outputs

    def _recover(self, status: str) -> None:
        """After a timeout or a death, make the kernel usable again (or give up trying)."""
        if status == "timeout":
            # nbclient has sent an interrupt; a kernel that answers now is usable again.
            probe, _, _ = self._execute("pass", timeout=5)
            if probe == "ok":
                return
        if self.restarts >= self.limits.max_restarts:
            self.close()
            raise StudentError(f"the kernel had to be restarted {self.restarts} times; giving up")
        try:
            self._restart()
        except Exception as e:  # noqa: BLE001 - a kernel that will not start again ends the session
            self.close()
            raise StudentError(f"the kernel could not be restarted ({type(e).__name__}: {e})") from None

    def run_notebook(self, cells: list[nbformat.NotebookNode]) -> list[CellRun]:
        """Run every code cell in order within the notebook's time limit, whatever each one does."""
        self.cells = [c for c in cells if c.get("cell_type") == "code"]
        self.runs = []
        deadline = time.monotonic() + self.limits.timeout
        for index, cell in enumerate(self.cells):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.client is None:
                why = "the notebook ran out of time" if remaining <= 0 else "the kernel could not be restarted"
                self.runs.append(CellRun(index, "skipped", why))
                continue
            if not str(cell.source).strip():
                continue
            status, detail, _ = self._execute(cell.source, min(self.limits.cell_timeout, remaining))
            self.runs.append(CellRun(index, status, detail))
            if status in ("timeout", "died"):
                try:
                    self._recover(status)
                except StudentError:
                    pass  # the session is closed; the remaining cells are marked skipped
        return self.runs

    def call(self, name: str, *args: Any, kind: str = "call", **kwargs: Any) -> Any:
        """Run the student's ``name(*args, **kwargs)`` in the kernel; return its plain result."""
        if name in self.broken:
            raise StudentError(f"`{name}` {self.broken[name]} on an earlier check, so it is not run again")
        if self.client is None:
            raise StudentError("the notebook's kernel is gone, so nothing could be checked")
        token = uuid.uuid4().hex
        path_in, path_out = self.io / f"{token}.in.pt", self.io / f"{token}.out.pt"
        torch.save({"args": list(args), "kwargs": dict(kwargs)}, path_in)
        source = _CALL_TEMPLATE.format(path_in=str(path_in), path_out=str(path_out), name=name, kind=kind)
        status, detail, _ = self._execute(source, self.limits.cell_timeout)
        try:
            if status in ("timeout", "died"):
                what = f"ran past the {self.limits.cell_timeout:g} s limit" if status == "timeout" else "killed the kernel"
                self.broken[name] = what
                self._recover(status)
                raise StudentError(f"`{name}` {what}")
            if not path_out.exists():
                raise StudentError(f"`{name}` gave no answer ({detail or 'nothing was returned'})")
            try:
                result = torch.load(path_out, weights_only=True)
            except Exception as e:  # noqa: BLE001 - whatever the kernel wrote, it is not plain data
                raise StudentError(f"what `{name}` returned could not be read as plain data ({type(e).__name__})") from None
        finally:
            path_in.unlink(missing_ok=True)
            path_out.unlink(missing_ok=True)
        if not isinstance(result, dict) or "status" not in result:
            raise StudentError(f"what `{name}` returned could not be read")
        if result["status"] == "missing":
            raise StudentError(f"`{name}` is not defined in the notebook")
        if result["status"] == "not_implemented":
            raise StudentError(f"`{name}` is not written yet (it raises NotImplementedError)")
        if result["status"] == "raised":
            raise StudentError(f"`{name}` raised {result.get('error', 'an exception')}")
        if result["status"] == "not_plain":
            raise StudentError(f"what `{name}` returned: {result.get('error')}")
        if result["status"] != "ok":
            raise StudentError(f"`{name}`: {result.get('status')}")
        return result.get("value")


class RemoteStudent:
    """The ``Student`` adapter of the grader: every call goes to the submission's kernel."""

    def __init__(self, session: KernelSession):
        self.session = session

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.session.call(name, *args, **kwargs)

    def value(self, name: str) -> Any:
        return self.session.call(name, kind="value")

    def call_on_ranks(self, name: str, world: int, args_per_rank: list, driver: str = "call") -> list:
        return self.session.call(name, world, list(args_per_rank), driver, kind="ranks")
    def launch(self, name: str, grid: tuple[int, ...], *args: Any, **meta: Any) -> list:
        return self.session.call(name, *args, kind="launch", __grid__=tuple(grid), **meta)
