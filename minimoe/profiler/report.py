"""Showing a profile: a table with humane byte counts, and a stacked timeline of the categories."""

from __future__ import annotations

from minimoe.profiler.categories import CATEGORIES
from minimoe.recipe import human

COLORS = {
    "parameters": "#4c72b0", "gradients": "#dd8452", "optimizer": "#55a868", "kv_cache": "#8172b3",
    "activations": "#c44e52", "temporaries": "#937860", "other": "#8c8c8c",
}


def nbytes(x: float) -> str:
    """1234567 -> '1.235 MB' (decimal units, 4 significant digits)."""
    return human(x, "B")


def format_table(prof) -> str:
    """Bytes by category at the peak, the most each reached, and at exit; then the peak and its place."""
    peak, most, last = prof.at_peak(), prof.max_by_category(), prof.at_exit()
    lines = [f"{'category':<12} {'at peak':>11} {'max':>11} {'at exit':>11}"]
    for c in CATEGORIES:
        if most[c] or last[c]:
            lines.append(f"{c:<12} {nbytes(peak[c]):>11} {nbytes(most[c]):>11} {nbytes(last[c]):>11}")
    lines.append(f"{'total':<12} {nbytes(sum(peak.values())):>11} {'':>11} {nbytes(sum(last.values())):>11}")
    where = prof.peak_where()
    lines.append(f"peak {nbytes(prof.peak)} ({nbytes(prof.peak_above_start)} above the start) "
                 f"during {where['phase']}, after {where['op']}")
    return "\n".join(lines)


def plot_timeline(prof, ax=None, title: str | None = None):
    """Stacked bytes by category against the event number, with the phases marked on top."""
    import matplotlib.pyplot as plt

    tl = prof.timeline()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    steps = range(len(tl["phase"]))
    shown = [c for c in CATEGORIES if any(tl[c])]
    ax.stackplot(steps, [[b / 1e6 for b in tl[c]] for c in shown], labels=shown,
                 colors=[COLORS[c] for c in shown], alpha=0.85)
    start = 0
    for i in range(1, len(tl["phase"]) + 1):  # label each run of one phase
        if i == len(tl["phase"]) or tl["phase"][i] != tl["phase"][start]:
            ax.axvline(start, color="k", lw=0.5, alpha=0.4)
            ax.text((start + i) / 2, 1.0, tl["phase"][start], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)
            start = i
    ax.set_xlabel("allocation / free event")
    ax.set_ylabel("MB alive")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, pad=14)
    return ax
