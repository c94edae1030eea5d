"""`make lab`: on a machine without a screen it opens no browser and prints the address to open."""

import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import lab  # noqa: E402

NOTEBOOK = "notebooks/00_setup_and_tour.ipynb"


@pytest.mark.parametrize("env, system, expected", [
    ({}, "Linux", True),
    ({"DISPLAY": ":0"}, "Linux", False),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "Linux", False),
    ({"DISPLAY": ":0", "SSH_CONNECTION": "1.2.3.4 5 6.7.8.9 22"}, "Linux", True),
    ({}, "Darwin", False),                       # a Mac has a screen without DISPLAY
    ({"SSH_TTY": "/dev/pts/1"}, "Darwin", True),
])
def test_headless_means_no_screen_or_a_remote_session(env, system, expected):
    assert lab.headless(env, system) is expected


def test_the_address_opens_the_notebook_with_the_token():
    server = {"url": "http://localhost:8888/", "token": "abc", "port": 8888}
    assert lab.notebook_url(server, NOTEBOOK) == f"http://localhost:8888/lab/tree/{NOTEBOOK}?token=abc"
    assert lab.notebook_url({"url": "http://h:1/base", "token": ""}, None) == "http://h:1/base/lab"


@pytest.mark.parametrize("screen", [False, True], ids=["no screen", "a screen"])
def test_make_lab_prints_an_address_that_opens_and_opens_a_browser_only_on_a_screen(tmp_path, screen):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SSH_CONNECTION", "SSH_TTY")}
    if screen:
        env["DISPLAY"] = ":0"
    opened = tmp_path / "browser-opened"
    browser = tmp_path / "browser.sh"  # a "browser" that only notes that it was asked to open a page
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    browser.chmod(0o755)
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), BROWSER=f"{browser} %s")
    args = [sys.executable, str(ROOT / "tools" / "lab.py"), "--port=0", f"--ServerApp.root_dir={ROOT}", NOTEBOOK]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(2, "--allow-root")
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        seen = []
        while not any("?token=" in line for line in seen):
            try:
                seen.append(lines.get(timeout=180))
            except queue.Empty:
                pytest.fail("no address within 180 s:\n" + "".join(seen) + (tmp_path / "jupyter.log").read_text()[-3000:])
        url = next(line.strip() for line in seen if "?token=" in line)
        assert url.startswith("http://localhost:") and f"/lab/tree/{NOTEBOOK}?token=" in url
        assert any("make lab: JupyterLab is running" in line for line in seen)
        try:
            with urllib.request.urlopen(url, timeout=60) as page:
                assert page.status == 200 and b"JupyterLab" in page.read()
        except OSError as e:
            pytest.fail(f"{url}: {e}\n{''.join(seen)}\nJupyterLab's log:\n{(tmp_path / 'jupyter.log').read_text()[-4000:]}")
        # JupyterLab asks for a browser right after it starts (in well under a second here): give it
        # 30 s where it should, and 5 s to show that it does not.
        for _ in range(60 if screen else 10):
            if opened.exists():
                break
            threading.Event().wait(0.5)
        rest = "".join(seen) + "".join(lines.get_nowait() for _ in range(lines.qsize()))
        assert opened.exists() is screen
        assert ("No screen here, so no browser was opened" in rest) is not screen
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
