"""Re-execute notebooks in place and store their outputs (``make notebooks``).

Each notebook runs in a fresh kernel of this Python, with its own folder as the working directory,
exactly as nbval will run it. The state of the widgets it displays is stored with it, so that a
rendering without a kernel (GitHub, nbviewer) shows the widgets themselves. A cell that raises stops the run (unless it is tagged
``raises-exception``) and the file is left as it was. The time each notebook took is printed, so
the 60-second budget of DESIGN.md stays in view.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import os

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient


class ThisPythonKernel(AsyncKernelManager):
    """A kernel of this very Python (the .venv's), whatever kernelspecs the machine has."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return [sys.executable, "-m", "ipykernel_launcher", "-f", os.path.realpath(self.connection_file),
                *(extra_arguments or [])]


def execute_in_place(path: Path, cell_timeout: int = 300) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        km=ThisPythonKernel(kernel_name="python3"),
        timeout=cell_timeout,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    start = time.monotonic()
    client.execute(stderr=subprocess.DEVNULL)  # the kernel's log lines, not cell output
    seconds = time.monotonic() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    # nbclient has stored the state of every widget the cells displayed (metadata.widgets, in the
    # format of Jupyter's widget-state schema): GitHub and nbviewer draw the widgets from it, with the
    # values they were built with, instead of printing `VBox(children=...)`.
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    if state is not None and not state.get("state"):
        nb.metadata.pop("widgets")  # no widget was displayed: keep the file free of an empty record
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return seconds


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: python tools/execute_notebooks.py NOTEBOOK...", file=sys.stderr)
        return 2
    for p in paths:
        seconds = execute_in_place(Path(p))
        print(f"{p}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
