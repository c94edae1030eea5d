"""The course's two headline experiments, reproducible: ``minimoe experiment ch05|ch10``.

- ``runner``: ``Run``, ``Experiment``, the ``RecordingTrainer``, training one run with its record and
  resuming, running a whole experiment in parallel processes, writing its summary.
- ``ch05``: dense against mixture-of-experts at equal activated FLOPs (seeds, balancing variants,
  a fine-grained MoE, the upper bracket, specialisation and its ablation).
- ``ch10``: chain of thought against direct answers at equal FLOPs and equal supervised tokens,
  with majority votes over sampled answers.

``summary(name)`` reads the summary shipped in ``minimoe/checkpoints/experiment-NAME.json``, which the
chapter's notebook plots.
"""

from __future__ import annotations

from minimoe.experiments.runner import Experiment, RecordingTrainer, Run, run_experiment, ship, train_run


def experiment(name: str) -> Experiment:
    """The experiment called ``name`` (``ch05`` or ``ch10``)."""
    from minimoe.experiments import ch05, ch10

    known = {"ch05": ch05.EXPERIMENT, "ch10": ch10.EXPERIMENT}
    if name not in known:
        raise ValueError(f"experiment: got {name!r}, need one of {', '.join(known)}")
    return known[name]


def summary(name: str) -> dict:
    """The shipped summary of experiment ``name`` (what ``minimoe experiment NAME`` wrote, then shipped)."""
    import json
    from importlib import resources

    experiment(name)
    path = resources.files("minimoe") / "checkpoints" / f"experiment-{name}.json"
    if not path.is_file():
        raise ValueError(f"name: no shipped summary for {name!r}; run `minimoe experiment {name} --ship`")
    return json.loads(path.read_text())


__all__ = ["Experiment", "RecordingTrainer", "Run", "experiment", "run_experiment", "ship", "summary", "train_run"]
