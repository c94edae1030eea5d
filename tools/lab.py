"""Start JupyterLab for `make lab` and print, on a line of its own, the address to open.

On a machine without a screen (a server, a container, an SSH session) no browser can open there, and
the address with its login token is lost among Jupyter's log lines. So this starts ``jupyter lab``
with the arguments it is given (adding ``--no-browser`` when there is no screen), waits until the
server has written down its address, and prints the address of the first notebook. Ctrl-C stops
JupyterLab as usual; the exit status is JupyterLab's.

    python tools/lab.py [JUPYTER LAB ARGUMENTS...] [NOTEBOOK]
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit


def headless(env: dict[str, str] | None = None, system: str | None = None) -> bool:
    """Whether a browser opened here would be out of the user's sight: an SSH session, or no display."""
    env = os.environ if env is None else env
    system = system or platform.system()
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return True
    if system in ("Darwin", "Windows"):
        return False
    return not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def notebook_url(server: dict, notebook: str | None) -> str:
    """The address that opens ``notebook`` (relative to the server's root) with the server's token."""
    url = server["url"] if server["url"].endswith("/") else server["url"] + "/"
    page = f"lab/tree/{quote(notebook)}" if notebook else "lab"
    token = server.get("token")
    return f"{url}{page}?token={token}" if token else f"{url}{page}"


def _server_of(pid: int) -> dict | None:
    """The server JupyterLab process ``pid`` runs, once it accepts connections (it writes its
    address down a moment before it listens)."""
    from jupyter_server.serverapp import list_running_servers

    for server in list_running_servers():
        if server.get("pid") == pid:
            address = urlsplit(server["url"])
            try:
                socket.create_connection((address.hostname, address.port), timeout=5).close()
            except OSError:
                return None
            return server
    return None


def main(args: list[str]) -> int:
    no_screen = headless()
    if no_screen and not any(a in ("--no-browser", "--ServerApp.open_browser=False") for a in args):
        args = [*args, "--no-browser"]
    notebook = next((a for a in args if a.endswith(".ipynb") and not a.startswith("-")), None)
    child = subprocess.Popen([sys.executable, "-m", "jupyterlab", *args])
    # Ctrl-C reaches JupyterLab too (same process group); it decides whether to stop. A plain kill
    # of this process (say, by make) is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    while child.poll() is None:
        server = _server_of(child.pid)
        if server is not None:
            print(f"\nmake lab: JupyterLab is running. Open this address in your browser:\n\n"
                  f"    {notebook_url(server, notebook)}\n", flush=True)
            if no_screen:
                print(f"  No screen here, so no browser was opened. On a remote machine, forward the port first:\n"
                      f"    ssh -N -L {server['port']}:localhost:{server['port']} THIS-MACHINE\n"
                      f"  Stop JupyterLab with Ctrl-C.\n", flush=True)
            break
        time.sleep(0.5)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
