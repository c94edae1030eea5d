"""Every notebook with a widget, opened in a real browser, run, and its controls moved.

nbval runs the notebooks without a browser, so it cannot see what a user sees: a slider's front end
snaps its value to the slider's steps and sends the snapped value back to the kernel (chapter 01's
calculator once showed 6.31e11 parameters instead of 671e9 that way). Here JupyterLab is started
as ``make lab`` starts it (no browser of its own, a free port, a token), Debian's Chromium opens
each notebook through Playwright, runs every cell, and then, for every control:

- the values shown before anything is moved are the values the notebook quotes, exactly;
- moving the control changes what the widget prints, and the new value arrives exactly.

The notebooks run in a copy of ``notebooks/`` (JupyterLab would otherwise save outputs over the
committed files), with JupyterLab's settings, workspaces and runtime files in a temporary folder.

Chromium: ``/usr/bin/chromium`` from Debian's ``chromium`` package (Playwright's own browser
download is not used), or the path in ``MINIMOE_CHROMIUM``. Without Chromium or Playwright the
tests are skipped, saying why; with ``MINIMOE_REQUIRE_BROWSER=1`` (``.ci/run`` sets it, after
installing Chromium) they fail instead, so CI cannot pass without having run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_widgets import widget_builders  # the package's functions that build a widget

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REQUIRED = os.environ.get("MINIMOE_REQUIRE_BROWSER") == "1"
WAIT_MS = 600_000  # a notebook's cells on a busy 2-core machine; the checks themselves wait far less
SETTLE_MS = 120_000  # a widget's answer to one moved control


# --- which notebooks have widgets ---------------------------------------------------------------

def notebooks_with_widgets() -> list[str]:
    """Lecture notebooks that show a widget: stored widget output, ipywidgets, or a widget-building call."""
    builders = widget_builders()
    found = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        stored = any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                     for c in nb.cells for o in c.get("outputs", []))
        calls = any(re.search(rf"\b{re.escape(name)}\(", code) for name in builders)
        if stored or "ipywidgets" in code or calls:
            found.append(path.name)
    return found


# --- what each notebook's widgets must do -------------------------------------------------------
# Every function gets the Playwright page, with the notebook run, and checks its widgets.

def _slider(page, label: str):
    return page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(label)}$")))


def _dropdown(page, label: str):
    return page.locator(".widget-dropdown").filter(has=page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(label)}$")))


def _step_right(control) -> None:
    """Move a slider one step to the right, as a user does with the keyboard."""
    handle = control.locator(".noUi-handle, .ui-slider-handle").first
    handle.focus()
    handle.press("ArrowRight")


def _changed(page, output, before: str, expect, must_contain: list[str]) -> str:
    """Wait until ``output`` shows other, settled text than ``before``, containing all of ``must_contain``."""
    page.wait_for_function("([el, before]) => el.innerText !== before && el.innerText.trim().length > 0",
                           arg=[output.element_handle(), before], timeout=SETTLE_MS, polling=200)
    for text in must_contain:
        expect(output).to_contain_text(text, timeout=SETTLE_MS)
    settled, now = None, output.inner_text()
    while now != settled:  # a widget may print in several pieces: wait until the text stops changing
        settled = now
        page.wait_for_timeout(500)
        now = output.inner_text()
    return now


def check_recipe_calculator(page, expect) -> None:
    """Chapter 01: the bill's calculator starts at the quoted figures, and every control arrives exactly."""
    output = page.locator(".widget-output").filter(has_text="FLOPs (6·N·D)").first
    expect(output).to_contain_text("total 671,000,000,000", timeout=SETTLE_MS)
    shown = output.inner_text()
    for quoted in ("total 671,000,000,000  activated 37,000,000,000  tokens 14,800,000,000,000",
                   "H800 SXM, bf16 peak, MFU 35%, $2.00 per GPU-hour"):
        assert quoted in shown, f"the calculator does not start at the figures the text quotes:\n{shown}"
    # The cell after the widget prints the same table without widgets: the two must agree, line for line.
    static = page.locator(".jp-Cell").filter(has=page.locator(".jp-InputArea", has_text="print(bill_table(")) \
        .locator(".jp-OutputArea-output").first.inner_text()
    assert [line.strip() for line in static.strip().splitlines()] == \
        [line.strip() for line in shown.strip().splitlines()], f"widget:\n{shown}\nprinted:\n{static}"
    readouts = {"total": "671B", "activated": "37B", "tokens": "14.8T", "MFU": "35%", "$/GPU-hour": "$2.00"}
    for label, readout in readouts.items():
        expect(_slider(page, label).locator(".widget-readout")).to_have_text(readout, timeout=SETTLE_MS)
    moves = [("total", "1T", "total 1,000,000,000,000"),
             ("activated", "70B", "activated 70,000,000,000"),
             ("tokens", "30T", "tokens 30,000,000,000,000"),
             ("MFU", "40%", "MFU 40%"),
             ("$/GPU-hour", "$3.00", "$3.00 per GPU-hour")]
    for label, readout, line in moves:
        slider = _slider(page, label)
        _step_right(slider)
        expect(slider.locator(".widget-readout")).to_have_text(readout, timeout=SETTLE_MS)
        shown = _changed(page, output, shown, expect, [line])
    _dropdown(page, "GPU").locator("select").select_option("t4")
    shown = _changed(page, output, shown, expect, ["T4, fp16 peak, MFU 40%, $3.00 per GPU-hour"])
    # Everything moved so far is still exact in the last table.
    for line in ("total 1,000,000,000,000  activated 70,000,000,000  tokens 30,000,000,000,000",):
        assert line in shown, shown


def check_progress_bar(page, expect) -> None:
    """Chapter 03: the Trainer's progress bar is drawn as a widget and ends full (30 of 30 steps)."""
    bar = page.locator(".widget-hprogress, .widget-progress").first
    expect(bar).to_be_visible(timeout=SETTLE_MS)
    box = page.locator(".widget-hbox").filter(has=bar).first
    expect(box).to_contain_text("30/30", timeout=SETTLE_MS)
    expect(box).to_contain_text("training", timeout=SETTLE_MS)
    assert box.locator(".progress-bar-success").count() == 1, "the bar did not end as finished"


def check_routing_explorer(page, expect) -> None:
    """Chapter 04: the routing explorer answers its sample and layer menus and its k slider."""
    k = _slider(page, "k")
    output = page.locator(".widget-output").filter(has_text=re.compile(r"e\d+ *:")).first
    expect(output).to_contain_text(":", timeout=SETTLE_MS)

    def experts_per_line(text: str) -> set[int]:
        return {len(re.findall(r"e\d+ *:\d", line)) for line in text.splitlines() if re.search(r"e\d+ *:", line)}

    shown = output.inner_text()
    start = int(k.locator(".widget-readout").inner_text())
    assert experts_per_line(shown) == {start}, f"k = {start}, but the lines show {experts_per_line(shown)} experts"
    for label in ("sample", "layer"):
        select = _dropdown(page, label).locator("select")
        if select.locator("option").count() > 1:
            select.select_option(index=1)
            shown = _changed(page, output, shown, expect, [])
    _step_right(k)
    expect(k.locator(".widget-readout")).to_have_text(str(start + 1), timeout=SETTLE_MS)
    page.wait_for_function("([el, k]) => el.innerText.split('\\n').some(l => (l.match(/e\\d+ *:\\d/g) || []).length === k)",
                           arg=[output.element_handle(), start + 1], timeout=SETTLE_MS)
    shown = output.inner_text()
    assert experts_per_line(shown) == {start + 1}


CHECKS = {
    "01_the_recipe.ipynb": check_recipe_calculator,
    "03_the_pan_dense.ipynb": check_progress_bar,
    "04_experts_and_the_router.ipynb": check_routing_explorer,
}


def test_every_notebook_with_a_widget_is_checked_in_the_browser():
    found = notebooks_with_widgets()
    assert "01_the_recipe.ipynb" in found, "the scan for widgets found nothing: has it stopped working?"
    missing = sorted(set(found) - set(CHECKS))
    assert not missing, f"{missing} show widgets that no browser check covers: add a check to CHECKS"


def test_stored_notebooks_carry_the_state_of_the_widgets_they_show():
    """GitHub and nbviewer draw a widget from metadata.widgets; without it they print `VBox(children=...)`."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        shown = {o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
                 for c in nb.cells for o in c.get("outputs", [])
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})}
        if not shown:
            continue
        state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
        missing = shown - set(state)
        assert not missing, (f"{path.name}: {len(missing)} widget(s) shown without their state; "
                             f"re-execute it with tools/execute_notebooks.py")


# --- the browser and the server -----------------------------------------------------------------

def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (MINIMOE_REQUIRE_BROWSER=1: the browser tests must run here)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    for candidate in (os.environ.get("MINIMOE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(folder: Path) -> None:
    """JupyterLab settings for the test: every cell in the page, no autosave, no news pop-up."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
    }
    for name, value in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@contextlib.contextmanager
def running_lab(tmp: Path, names):
    """JupyterLab, started as `make lab` starts it, on copies of the notebooks ``names``: (base URL, token)."""
    work = tmp / "notebooks"
    work.mkdir()
    for name in names:
        shutil.copy(NOTEBOOKS / name, work / name)
    for sub in ("settings", "workspaces", "runtime", "config", "data"):
        (tmp / sub).mkdir()
    _write_settings(tmp / "settings")
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_DATA_DIR=str(tmp / "data"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MPLBACKEND", None)  # the notebooks draw inline, as they do for a user
    # As `make lab` starts it: this Python's JupyterLab, no browser of its own, root allowed for root.
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(tmp / "lab.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=30) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(tmp / 'lab.log').read_text()[-3000:]}")
            time.sleep(1)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Playwright is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    if chromium_path() is None:
        _missing("no Chromium found: install Debian's chromium package (apt-get install chromium) or set "
                 "MINIMOE_CHROMIUM to a Chromium binary")
    with running_lab(tmp_path_factory.mktemp("lab"), CHECKS) as server:
        yield server


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu",
                                                                      "--disable-dev-shm-usage"])
        yield b
        b.close()


RUN_ALL = """async () => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    window.__minimoe_done = undefined;
    app.commands.execute('notebook:run-all-cells').then(
        ok => { window.__minimoe_done = {ok: ok}; },
        err => { window.__minimoe_done = {ok: false, error: String(err)}; });
}"""

ERRORS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const errors = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        for (const out of cell.outputs.toJSON()) {
            if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
        }
        if (cell.executionCount === null) errors.push(`cell ${i} did not run`);
    }
    return errors;
}"""


def open_and_run(browser, base: str, token: str, name: str):
    """A page with notebook ``name`` open and every cell run; fails if a cell raised."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # A workspace of its own: JupyterLab would otherwise reopen the notebooks of the pages before.
    page.goto(f"{base}/lab/workspaces/{name.split('_')[0]}-{secrets.token_hex(4)}/tree/{name}?reset&token={token}",
              timeout=WAIT_MS)
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; "
                           "return w && w.context && w.context.path === name && w.content && w.content.model; }",
                           arg=name, timeout=WAIT_MS)
    page.evaluate(RUN_ALL)
    page.wait_for_function("() => window.__minimoe_done !== undefined", timeout=WAIT_MS, polling=1000)
    done = page.evaluate("() => window.__minimoe_done")
    errors = page.evaluate(ERRORS)
    assert done["ok"] and not errors, f"{name} did not run cleanly in JupyterLab: {done} {errors}"
    return page


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_widgets_in_a_real_browser(name, lab, browser):
    from playwright.sync_api import expect

    page_errors: list[str] = []
    page = None
    try:
        page = open_and_run(browser, *lab, name)
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        CHECKS[name](page, expect)
        assert not page_errors, page_errors
    finally:
        if page is not None:
            page.close()
