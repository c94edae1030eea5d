"""The experiment runner: train every run of an experiment, record each, resume, then summarise.

An experiment (chapter 05's dense against MoE, chapter 10's thinking against answering) is a list of
``Run``s: a model config, a seed, a training schedule, the data and what to measure at the end.
``run_experiment`` trains the runs that have no record yet, each in its own folder::

    OUT/runs/NAME/checkpoint.pt   the Trainer's checkpoint (model, optimizer, step) while it trains
    OUT/runs/NAME/metrics.jsonl   one line per step (the Trainer's), plus the recorder's columns
    OUT/runs/NAME/recorder.json   the load history so far (for resuming)
    OUT/runs/NAME/record.json     written last: the run is finished, and is skipped from then on
    OUT/runs/NAME/weights.pt      the final weights in fp16 (and weights-STEP.pt for kept steps): the
                                  evaluation at the end of the run loads these, as a notebook would
    OUT/summary.json              what the notebook plots, made from every record

A run stopped anywhere (a crash, Ctrl-C, a killed machine) resumes from its last checkpoint with the
same batches (``minimoe.train``'s guarantee), so running the same command again finishes the job.
Killing the runner, even with SIGKILL, also stops its worker processes (``exit_with_parent``).

``RecordingTrainer`` is the ``Trainer`` plus what chapter 05 plots: each step's wall-clock and CPU
time (validation excluded), real tokens, scored tokens and training FLOPs so far, and each MoE
layer's load per expert on real tokens, averaged over windows of ``load_every`` steps.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.data import Batch
from minimoe.model import Transformer, build_model
from minimoe.moe import MoELayer
from minimoe.train import TrainConfig, Trainer, load_model, mixture_batches, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    """One training run of an experiment."""

    name: str  # its folder, unique in the experiment: "moe-switch-s0"
    setting: str  # the configuration it is one seed of: "moe-switch"
    seed: int  # model initialisation and batch order (the problems themselves come from data["data_seed"])
    model: ModelConfig
    train: TrainConfig
    data: dict  # keyword arguments of minimoe.train.mixture_batches (all but seed)
    group: str = "main"  # "main": the experiment itself; "search": a setting tried on the way
    keep: tuple[int, ...] = ()  # steps (besides the last) whose weights are kept and evaluated
    load_every: int = 100  # steps per window of the load history
    evaluation: dict = field(default_factory=dict)  # settings of the experiment's end-of-run evaluation


@dataclass(frozen=True)
class Experiment:
    """What ``minimoe experiment NAME`` runs: its runs, the evaluation of a trained model, the summary."""

    name: str
    title: str
    runs: Callable[[bool, int], list[Run]]  # (quick, seeds) -> runs
    evaluate: Callable[[Run, Transformer], dict]  # (run, trained model on the CPU) -> measurements
    summarize: Callable[[list[dict]], dict]  # records -> what the notebook plots
    default_seeds: int = 1
    ship: dict[str, str] = field(default_factory=dict)  # checkpoint name -> run whose final weights it ships


# --- what a step costs ------------------------------------------------------------------------------

def sample_lengths(batch: Batch) -> list[int]:
    """The length in tokens of every sample in a batch (packed rows hold several, padded rows one)."""
    if batch.segments is not None:
        seg = batch.segments.cpu()  # (B, T), -1 on PAD
        rows = torch.arange(seg.shape[0])[:, None] * (seg.shape[1] + 1)  # (B, 1): a distinct id per (row, sample)
        ids = (seg + rows)[seg >= 0]
        counts = torch.bincount(ids)
        return counts[counts > 0].tolist()
    mask = batch.token_mask if batch.token_mask is not None else torch.ones_like(batch.inputs, dtype=torch.bool)
    return [n for n in mask.sum(dim=1).tolist() if n > 0]


def batch_flops(cfg: ModelConfig, batch: Batch, n_activated: int | None = None) -> float:
    """Training FLOPs of one step on ``batch``: 6·N_activated per real token, plus causal attention
    inside each sample (``recipe.attention_flops_per_token`` at the sample's own length)."""
    n = recipe.count_params(cfg).activated if n_activated is None else n_activated
    lengths = sample_lengths(batch)
    dense = 6.0 * n * sum(lengths)
    return dense + sum(length * recipe.attention_flops_per_token(cfg, length) for length in lengths)


class RecordingTrainer(Trainer):
    """A ``Trainer`` that also records time, tokens, FLOPs and the load per expert (see the module doc).

    ``load_every``: steps per window of the load history. ``keep``: steps after which the weights
    are written to ``weights-STEP.pt`` (fp16) in the run folder.
    """

    plot_loss = False  # the record holds the curves; no loss.png per run

    def __init__(self, *args, load_every: int = 100, keep: tuple[int, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(load_every, int) or isinstance(load_every, bool) or load_every < 1:
            raise ValueError(f"load_every: got {load_every!r}, need an int >= 1")
        self.load_every, self.keep = load_every, tuple(keep)
        self.load_history: list[dict] = []
        self._loads: dict[int, list[torch.Tensor]] = {}
        self._totals = {"elapsed_s": 0.0, "cpu_s": 0.0, "tokens_seen": 0, "scored_seen": 0, "flops": 0.0}
        self._clock: tuple[float, float] | None = None  # (wall, cpu) when counting (re)started
        self._excluded = [0.0, 0.0]  # (wall, cpu) spent validating since then
        self._n_activated = recipe.count_params(self.model.cfg).activated
        for i, block in enumerate(self.model.blocks):
            if isinstance(block.ffn, MoELayer):
                block.ffn.register_forward_hook(self._load_hook(i))

    def _load_hook(self, index: int):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():  # training steps only, not validation
                self._loads.setdefault(index, []).append(output[1]["load"].detach())  # (E,) real tokens only
        return hook

    def _times(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        if self._clock is None:
            self._clock = (wall, cpu)
        return (self._totals["elapsed_s"] + wall - self._clock[0] - self._excluded[0],
                self._totals["cpu_s"] + cpu - self._clock[1] - self._excluded[1])

    def validate(self):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return super().validate()
        finally:
            self._excluded[0] += time.perf_counter() - wall
            self._excluded[1] += time.process_time() - cpu

    def train_step(self, batch: Batch) -> dict:
        self._times()  # start the clocks before the first step
        record = super().train_step(batch)
        elapsed, cpu = self._times()
        t = self._totals
        t["tokens_seen"] += record["real_tokens"]
        t["scored_seen"] += record["tokens"]
        t["flops"] += batch_flops(self.model.cfg, batch, self._n_activated)
        record.update(elapsed_s=elapsed, cpu_s=cpu, tokens_seen=t["tokens_seen"], scored_seen=t["scored_seen"],
                      flops=t["flops"])
        done = self.step + 1  # steps finished once this one is counted
        if done % self.load_every == 0 and self._loads:
            self.load_history.append({
                "step": done,
                "load": {str(i): torch.stack(v).mean(0).tolist() for i, v in self._loads.items()},  # (E,) per layer
                "bias": {str(i): b.ffn.router.bias.tolist() for i, b in enumerate(self.model.blocks)
                         if isinstance(b.ffn, MoELayer) and b.ffn.router.uses_bias}})
            self._loads.clear()
        if done in self.keep and self.out is not None:
            save_checkpoint(self.out / f"weights-{done}.pt", self.model, None, done, self.cfg, self.data.describe(),
                            weights_dtype=torch.float16)
        return record

    def save(self):
        path = super().save()
        if self.out is not None:
            _write_json(self.out / "recorder.json", {"step": self.step, "load_history": self.load_history})
        return path

    def resume(self, path=None) -> int:
        step = super().resume(path)
        state_file = self.out / "recorder.json" if self.out is not None else None
        if state_file is not None and state_file.exists():
            state = json.loads(state_file.read_text())
            self.load_history = [h for h in state["load_history"] if h["step"] <= step]
        if self.metrics:
            last = self.metrics[-1]
            self._totals = {k: last.get(k, 0) for k in self._totals}
        self._clock, self._excluded, self._loads = None, [0.0, 0.0], {}
        return step


# --- provenance -----------------------------------------------------------------------------------

def git_commit() -> str:
    """The repository's commit (``+dirty`` if tracked files changed), or ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: str = "cpu", threads: int = 1) -> dict:
    """Where a run ran: the platform, CPU count and load, torch, the device and the threads it used."""
    from minimoe.course import describe_device

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "device": describe_device(device), "threads": threads}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _round(x, digits: int = 5):
    """Floats to ``digits`` significant digits, recursively (records stay small and readable)."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, digits) for v in x]
    return x


CURVE_KEYS = ("step", "ce", "val_ce", "aux_loss", "lr", "elapsed_s", "cpu_s", "tokens_seen", "scored_seen", "flops")


# --- one run ----------------------------------------------------------------------------------------

def run_folder(out: str | Path, run: Run) -> Path:
    return Path(out) / "runs" / run.name


def train_run(experiment: Experiment, run: Run, folder: str | Path, device: str = "cpu", threads: int = 1,
              command: str = "", stop_after: int | None = None) -> dict | None:
    """Train ``run`` in ``folder`` (resuming its checkpoint if there is one), evaluate it, write its record.

    A folder that holds ``record.json`` is a finished run: it is read, not trained. ``stop_after``
    stops training at that step, as a crash would (for tests); nothing is evaluated and None is returned.
    """
    folder = Path(folder)
    record_path = folder / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    torch.set_num_threads(threads)
    started = time.time()
    data = mixture_batches(seed=run.seed, **run.data)
    model = build_model(run.model, seed=run.seed)
    trainer = RecordingTrainer(model, data, run.train, out_dir=folder, progress=False, device=device,
                               load_every=run.load_every, keep=run.keep)
    resumed_from = trainer.resume() if (folder / "checkpoint.pt").exists() else 0
    trainer.fit(stop_after=stop_after)
    if stop_after is not None and trainer.step < run.train.steps:
        return None
    train_s = time.time() - started
    # The weights as shipped (fp16) are the ones evaluated, so a notebook that loads them can check the record.
    save_checkpoint(folder / "weights.pt", model, None, trainer.step, run.train, data.describe(),
                    weights_dtype=torch.float16, extra={"metrics": [{k: m[k] for k in ("step", "ce", "val_ce") if k in m}
                                                                   for m in trainer.metrics],
                                                        "run": run.name, "command": command})
    evaluations = {}
    for step in (*run.keep, run.train.steps):
        kept, _ = load_model(folder / ("weights.pt" if step == run.train.steps else f"weights-{step}.pt"))
        evaluations[str(step)] = experiment.evaluate(run, kept.eval())
    counts = recipe.count_params(run.model)
    curve = [{k: m[k] for k in CURVE_KEYS if k in m} | {k: v for k, v in m.items() if k.startswith("ffn/")}
             for m in trainer.metrics]
    record = _round({
        "name": run.name, "setting": run.setting, "seed": run.seed, "group": run.group, "experiment": experiment.name,
        "model_config": asdict(run.model), "params": {"total": counts.total, "activated": counts.activated},
        "train_config": asdict(run.train), "data": data.describe(), "keep": list(run.keep),
        "evaluation_settings": run.evaluation, "command": command, "git_commit": git_commit(),
        "machine": machine(device, threads), "resumed_from": resumed_from,
        "train_wall_s": train_s, "eval_wall_s": time.time() - started - train_s,
        "elapsed_s": trainer.metrics[-1]["elapsed_s"], "cpu_s": trainer.metrics[-1]["cpu_s"],
        "curve": curve, "load_history": trainer.load_history, "evaluations": evaluations,
    })
    _write_json(record_path, record)
    (folder / "checkpoint.pt").unlink(missing_ok=True)  # the optimizer state is no longer needed
    return json.loads(record_path.read_text())  # as any later reader sees it (JSON: layer keys are strings)


def exit_with_parent(parent: int, every: float = 2.0) -> threading.Thread:
    """Exit this process within ``every`` seconds of process ``parent`` ending (killed, even by SIGKILL).

    A worker of the runner's pool would otherwise go on training as an orphan after the runner is
    killed, and a second runner would then train the same run beside it. Checkpoints and records are
    written atomically, so exiting at any moment loses at most the steps since the last checkpoint.
    """
    if not isinstance(parent, int) or isinstance(parent, bool) or parent < 1:
        raise ValueError(f"parent: got {parent!r}, need a process id")
    if not every > 0:
        raise ValueError(f"every: got {every!r}, need seconds > 0")

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)  # no cleanup: the parent is gone, and nothing of this run is half-written

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _work(experiment_name: str, run: Run, folder: str, device: str, threads: int, command: str,
          parent: int | None = None) -> str:
    """One run in a worker process (a fresh interpreter: spawn); it exits if the runner ``parent`` dies."""
    from minimoe.experiments import experiment

    if parent is not None:
        exit_with_parent(parent)
    torch.set_num_threads(threads)
    train_run(experiment(experiment_name), run, folder, device, threads, command)
    return run.name


# --- a whole experiment -------------------------------------------------------------------------------

def default_jobs(device: str, n_runs: int) -> int:
    """All runs at once on a GPU; one process per CPU core otherwise (each with one thread)."""
    if str(device).startswith("cuda"):
        return max(1, n_runs)
    return max(1, min(n_runs, os.cpu_count() or 1))


def run_experiment(name: str, quick: bool = False, seeds: int | None = None, device: str = "cpu",
                   jobs: int | None = None, out: str | Path | None = None, threads: int = 1,
                   command: str = "", log: Callable[[str], None] = print) -> dict:
    """Train every run of experiment ``name`` not finished yet, then write and return the summary.

    Runs go to ``jobs`` worker processes (1: in this process, one after another). A run that fails is
    reported and the others go on; the summary is written only when every run has its record.
    """
    from minimoe.experiments import experiment as get

    exp = get(name)
    seeds = (1 if quick else exp.default_seeds) if seeds is None else seeds
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds: got {seeds!r}, need an int >= 1")
    if device != "cpu" and not (str(device).startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"device: got {device!r}, need 'cpu' or an available 'cuda'")
    runs = exp.runs(quick, seeds)
    out = Path(out) if out is not None else Path("runs") / f"experiment-{name}{'-quick' if quick else ''}"
    todo = [r for r in runs if not (run_folder(out, r) / "record.json").exists()]
    jobs = default_jobs(device, len(todo)) if jobs is None else jobs
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs: got {jobs!r}, need an int >= 1")
    log(f"{exp.name}: {len(runs)} runs in {out}; {len(runs) - len(todo)} finished already (skipped), "
        f"{len(todo)} to train with {min(jobs, max(1, len(todo)))} process(es) on {device}")
    started, failed = time.time(), []
    if jobs == 1 or len(todo) <= 1:
        for r in todo:
            t0 = time.time()
            try:
                train_run(exp, r, run_folder(out, r), device, threads, command)
                log(f"  {r.name}: done in {time.time() - t0:.0f} s")
            except Exception:  # noqa: BLE001 - one failed run must not stop the others
                failed.append(r.name)
                log(f"  {r.name}: FAILED\n{traceback.format_exc()}")
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            me = os.getpid()  # each worker exits when this process is gone
            futures = {pool.submit(_work, exp.name, r, str(run_folder(out, r)), device, threads, command, me): r
                       for r in todo}
            for fut in as_completed(futures):
                r = futures[fut]
                try:
                    fut.result()
                    log(f"  {r.name}: done ({time.time() - started:.0f} s since start)")
                except Exception:  # noqa: BLE001
                    failed.append(r.name)
                    log(f"  {r.name}: FAILED\n{traceback.format_exc()}")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)}; run the same command again to "
                           "resume them (finished runs are skipped)")
    records = [json.loads((run_folder(out, r) / "record.json").read_text()) for r in runs]
    summary = exp.summarize(records)
    summary["provenance"] = _round({
        "experiment": exp.name, "title": exp.title, "quick": quick, "seeds": seeds, "command": command,
        "git_commit": git_commit(), "machine": machine(device, threads), "runs": len(records),
        "run_wall_s": {r["name"]: r["train_wall_s"] + r["eval_wall_s"] for r in records},
        "run_cpu_s": {r["name"]: r["cpu_s"] for r in records},
        "total_run_wall_s": sum(r["train_wall_s"] + r["eval_wall_s"] for r in records),
        "total_train_cpu_s": sum(r["cpu_s"] for r in records),
        "this_invocation_wall_s": time.time() - started,
    })
    _write_json(out / "summary.json", summary)
    log(f"wrote {out / 'summary.json'}")
    return summary


def ship(name: str, out: str | Path, folder: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Copy an experiment's summary (``experiment-NAME.json``) and its chosen weights into ``folder``."""
    from minimoe.experiments import experiment as get

    exp, out, folder = get(name), Path(out), Path(folder)
    summary = out / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"no summary at {summary}: run the experiment first")
    written = [folder / f"experiment-{name}.json"]
    written[0].write_bytes(summary.read_bytes())
    for checkpoint, run_name in exp.ship.items():
        source = out / "runs" / run_name / "weights.pt"
        if not source.exists():
            raise FileNotFoundError(f"no weights at {source}")
        target = folder / f"{checkpoint}.pt"
        target.write_bytes(source.read_bytes())
        written.append(target)
    for p in written:
        log(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    return written


def main_argv() -> str:
    """The command line that started this process, for the records."""
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
