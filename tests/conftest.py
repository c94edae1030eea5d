"""Every test starts from the same random state, so a test's random inputs are the same on every run.

And the run ends with one line saying what ran: unit tests, wheel checks, notebooks and their cells.
"""

import os
import random
import time

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# --- one line at the very end saying what ran --------------------------------------------------

_STARTED = time.monotonic()  # this file is read as pytest starts, before collection

def _kind(report) -> str:
    folder = report.nodeid.split("/", 1)[0]
    if folder in ("notebooks", "solutions", "exercises"):
        return folder
    return "install" if "install" in getattr(report, "keywords", {}) else "unit"


def summary_line(stats: dict, seconds: float, label: str) -> str:
    """``make test: 1,234 passed, 0 failed in 7.4 min: 560 unit tests, ..., 11 lecture, ... notebooks by nbval (700 cells)``.

    ``stats`` is pytest's terminal reporter's: outcome -> reports. A test counts once, under its
    worst outcome's name as pytest counts it (an error in setup is "failed" here).
    """
    counted = {"passed", "failed", "error", "skipped", "xfailed", "xpassed"}
    reports = [(outcome, r) for outcome, rs in stats.items() if outcome in counted for r in rs
               if getattr(r, "when", "call") in ("call", "setup") or outcome in ("failed", "error")]
    outcomes = {o: len({r.nodeid for k, r in reports if k == o}) for o in counted}
    tests = {r.nodeid: _kind(r) for _, r in reports}
    kinds = {k: sum(1 for v in tests.values() if v == k) for k in ("unit", "install", "notebooks", "solutions", "exercises")}
    files = {k: len({n.split("::")[0] for n, v in tests.items() if v == k}) for k in ("notebooks", "solutions", "exercises")}
    parts = [f"{kinds['unit']:,} unit tests"]
    if kinds["install"]:
        parts.append(f"{kinds['install']:,} wheel and ipywidgets-7 checks")
    if any(files.values()):
        parts.append(f"{files['notebooks']} lecture, {files['solutions']} solution and {files['exercises']} exercise "
                     f"notebooks by nbval ({kinds['notebooks'] + kinds['solutions'] + kinds['exercises']:,} cells)")
    shown = [f"{outcomes['passed']:,} passed", f"{outcomes['failed'] + outcomes['error']:,} failed"]
    shown += [f"{outcomes[o]:,} {o}" for o in ("skipped", "xfailed", "xpassed") if outcomes[o]]
    return f"{label}: {', '.join(shown)} in {seconds / 60:.1f} min: {', '.join(parts)}"


def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller prints the line
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not reporter.stats:
        return
    seconds = time.monotonic() - _STARTED
    reporter.write_line(summary_line(reporter.stats, seconds, os.environ.get("MINIMOE_TEST_LABEL", "pytest")))
