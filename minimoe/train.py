"""Training: AdamW with warm-up and cosine decay, clipping, validation, logs, checkpoints, resume.

The batch of step ``s`` is a pure function of the data seed and ``s`` (``BatchSource.batch``),
and a checkpoint holds the model, the optimizer and the step. So a run stopped at any checkpoint
and resumed produces the same losses, to the bit, as one that never stopped. Checkpoints are
written to a temporary file and renamed, so a crash never leaves half a checkpoint; a loss that
turns NaN or infinite stops the run and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import torch

from minimoe.config import ModelConfig
from minimoe.data import TOKENIZER, Batch, CharTokenizer, Sample, collate
from minimoe.data.packing import PackedSamples
from minimoe.model.transformer import FFNFactory, Transformer, build_model, default_ffn, param_groups

CHECKPOINT_FORMAT = "minimoe-checkpoint"
CHECKPOINT_VERSION = 1


class BatchSource(Protocol):
    def batch(self, step: int) -> Batch: ...

    def val_batches(self) -> list[Batch]: ...

    def describe(self) -> dict: ...


class SampleBatches:
    """Batches drawn from a list of samples, the batch of step ``s`` a pure function of (seed, s).

    Packed (the default): each step takes ``batch_size`` rows of ``seq_len`` positions from
    ``minimoe.data.packing.PackedSamples``, whole samples back to back, every sample once per epoch.
    Padded (``pack=False``): each step takes ``batch_size`` samples at random, padded to the longest.
    Validation batches are always padded (``collate``), ``batch_size`` samples each.
    """

    def __init__(self, train: list[Sample], val: list[Sample] | None = None, batch_size: int = 16, seed: int = 0,
                 score: str = "answer", tokenizer: CharTokenizer = TOKENIZER, info: dict | None = None,
                 pack: bool = True, seq_len: int = 256):
        if not train:
            raise ValueError("train: need at least one sample")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size!r}, need an int >= 1")
        if not isinstance(pack, bool):
            raise TypeError(f"pack: got {type(pack).__name__}, need a bool")
        self.train, self.val, self.batch_size, self.seed = train, val or [], batch_size, seed
        self.score, self.tokenizer, self.info = score, tokenizer, info or {}
        self.pack, self.seq_len = pack, seq_len
        self.packed = PackedSamples(train, seq_len, seed, score, tokenizer) if pack else None
        self._val = [collate(self.val[i:i + batch_size], tokenizer, score)
                     for i in range(0, len(self.val), batch_size)]

    def batch(self, step: int) -> Batch:
        if self.packed is not None:
            return self.packed.rows(step * self.batch_size, self.batch_size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(0, len(self.train), (self.batch_size,), generator=g).tolist()
        return collate([self.train[i] for i in idx], self.tokenizer, self.score)

    def val_batches(self) -> list[Batch]:
        return self._val

    def describe(self) -> dict:
        packing = {"packed": True, "seq_len": self.seq_len, "rows_per_epoch": self.packed.rows_per_epoch,
                   "fill": round(self.packed.fill(), 4)} if self.packed is not None else {"packed": False}
        return {"kind": "samples", "n_train": len(self.train), "n_val": len(self.val),
                "batch_size": self.batch_size, "seed": self.seed, "score": self.score, **packing, **self.info}


def mixture_batches(n_train: int = 20000, n_val: int = 512, batch_size: int = 16, seed: int = 0,
                    weights: dict[str, float] | None = None, score: str = "answer",
                    signed: float = 0.0, signer: str = "TeacherBot", pack: bool = True,
                    seq_len: int = 256, data_seed: int | None = None) -> SampleBatches:
    """Chapter 02's mixture, split by problem, as a batch source (packed rows of ``seq_len`` by default).

    ``signed``: the fraction of training answers a "teacher" signs (``-- answered by {signer}``),
    for chapter 10's identity experiment; validation answers stay unsigned.
    ``data_seed``: the seed of the problems and of their split (default: ``seed``); with it, ``seed``
    sets only the order of the batches, so runs of several seeds share one training and validation set.
    """
    from minimoe.data import Mixture, sign_answers

    mix = Mixture(weights, seed=seed if data_seed is None else data_seed)
    train = mix.sample(n_train, "train")
    if signed:
        train = sign_answers(train, signer=signer, fraction=signed, seed=seed)
    info = {"kind": "mixture", "mixture": dict(mix.weights), "signed": signed, "signer": signer if signed else "",
            "data_seed": mix.seed}
    return SampleBatches(train, mix.sample(n_val, "val"), batch_size, seed, score, info=info, pack=pack,
                         seq_len=seq_len)


class TextBatches:
    """Windows of a text file (``minimoe.data.load_text``): step ``s`` reads windows chosen by (seed, s)."""

    def __init__(self, corpus, batch_size: int = 32, seq_len: int = 128, seed: int = 0, n_val: int = 8):
        self.corpus, self.batch_size, self.seq_len, self.seed = corpus, batch_size, seq_len, seed
        g = torch.Generator().manual_seed(seed + 99991)
        self._val = [corpus.batch(batch_size, seq_len, "val", generator=g) for _ in range(n_val)] \
            if corpus.split("val").numel() > seq_len else []
        self.tokenizer = corpus.tokenizer

    def batch(self, step: int) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.corpus.batch(self.batch_size, self.seq_len, "train", generator=g)

    def val_batches(self) -> list[Batch]:
        return self._val

    def describe(self) -> dict:
        # Windows of running text hold no PAD: they are packed already (one document, no boundaries).
        return {"kind": "text", "path": str(self.corpus.path), "tokens": len(self.corpus),
                "batch_size": self.batch_size, "seq_len": self.seq_len, "seed": self.seed, "packed": True}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "warmup", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "warmup" else 1):
                raise ValueError(f"{name}: got {v!r}, need a positive int")
        for name in ("lr", "min_lr", "grad_clip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}: got {v!r}, need a positive number")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: got {self.min_lr}, need at most lr={self.lr}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup`` steps, then a cosine down to ``min_lr`` at ``steps``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def layer_stats(aux: list[dict]) -> dict[str, float]:
    """The scalar statistics the blocks' feed-forwards reported, averaged over the layers that reported them.

    ``{"max_load": 1.3}`` from two layers becomes ``{"ffn/max_load": mean}``; the ``"loss"`` entry and
    anything that is not a single number are left out.
    """
    sums: dict[str, list[float]] = {}
    for layer in aux:
        for key, value in layer.items():
            if key == "loss":
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sums.setdefault(f"ffn/{key}", []).append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items()}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupted, truncated, or made for another model."""


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, with weight decay on matrices only (not on norms' weights)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


# --- checkpoints ---------------------------------------------------------------------------------

def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, model: Transformer, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, train_config: TrainConfig | None = None, data: dict | None = None,
                    tokenizer: CharTokenizer = TOKENIZER, weights_dtype: torch.dtype | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (to ``path.tmp``, then renamed)."""
    state = model.state_dict()
    if weights_dtype is not None:
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    obj = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": asdict(model.cfg), "step": step, "model": state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_config": asdict(train_config) if train_config is not None else None,
        "data": data or {}, "tokenizer": tokenizer.chars, "extra": extra or {},
    }
    path = Path(path)
    _atomic_save(obj, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's contents (plain data only), or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, garbage bytes, a foreign pickle
        raise CheckpointError(f"{path} is corrupted or truncated and cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a minimoe checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}; this minimoe reads {CHECKPOINT_VERSION}")
    obj["path"] = str(path)
    return obj


def config_from_checkpoint(obj: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in obj["model_config"].items() if k in known})


def load_model(path: str | Path, ffn_factory: FFNFactory = default_ffn, dtype: torch.dtype = torch.float32
               ) -> tuple[Transformer, dict]:
    """The model a checkpoint holds (in ``dtype``), and the checkpoint's other contents."""
    obj = read_checkpoint(path)
    model = Transformer(config_from_checkpoint(obj), ffn_factory)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in obj["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{obj['path']}: its weights do not fit its own config ({str(e).splitlines()[0]})") from None
    return model.to(dtype), obj


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """Train ``model`` on ``data`` for ``config.steps`` steps, logging to ``out_dir`` if given."""

    plot_loss: bool = True  # draw loss.png in out_dir at the end of fit()

    def __init__(self, model: Transformer, data: BatchSource, config: TrainConfig = TrainConfig(),
                 out_dir: str | Path | None = None, progress: bool = True, device: str | torch.device = "cpu",
                 dispatch: str | None = None):
        """``dispatch``: the expert-dispatch backend for every MoE layer (``auto``, ``torch``, ``triton``,
        ``loop``); None keeps the model's own (``auto`` unless changed). Recorded in the checkpoint."""
        rows = data.describe().get("seq_len") if data.describe().get("packed") else None
        if rows is not None and rows > model.cfg.max_seq_len:
            raise ValueError(f"data: rows of {rows} positions, but model {model.cfg.name!r} takes at most "
                             f"{model.cfg.max_seq_len}; make the batches with seq_len <= {model.cfg.max_seq_len}")
        self.model, self.data, self.cfg = model.to(device), data, config
        self.device = torch.device(device)
        if dispatch is not None:
            from minimoe.moe import set_dispatch_backend

            set_dispatch_backend(model, dispatch)
        from minimoe.moe import MoELayer

        backends = sorted({m.backend for m in model.modules() if isinstance(m, MoELayer)})
        self.dispatch = ",".join(backends) or None  # None: a dense model dispatches nothing
        self.out = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.optimizer = make_optimizer(model, config)
        self.step = 0
        self.metrics: list[dict] = []

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None

    # -- state --
    def save(self) -> Path | None:
        if self.out is None:
            return None
        return save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.step, self.cfg,
                               self.data.describe(), getattr(self.data, "tokenizer", TOKENIZER),
                               extra={"dispatch": self.dispatch})

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from a checkpoint (default: this run's); returns the step it continues from."""
        obj = read_checkpoint(path or self.checkpoint_path)
        if config_from_checkpoint(obj) != self.model.cfg:
            raise CheckpointError(f"{obj['path']} was made for model {obj['model_config'].get('name')!r} "
                                  f"with another config than this run's {self.model.cfg.name!r}")
        self.model.load_state_dict(obj["model"])
        if obj["optimizer"] is not None:
            self.optimizer.load_state_dict(obj["optimizer"])
        self.step = obj["step"]
        if self.out is not None and (self.out / "metrics.jsonl").exists():
            lines = (self.out / "metrics.jsonl").read_text().splitlines()
            self.metrics = [m for m in map(json.loads, lines) if m["step"] < self.step]
            self._write_metrics()
        return self.step

    def _write_metrics(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(m) + "\n" for m in self.metrics))
        os.replace(tmp, self.out / "metrics.jsonl")

    def _log(self, record: dict) -> None:
        self.metrics.append(record)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    # -- work --
    @torch.no_grad()
    def validate(self) -> float | None:
        batches = self.data.val_batches()
        if not batches:
            return None
        self.model.eval()
        total = count = 0.0
        for b in batches:
            b = b.to(self.device)
            out = self.model(**b.model_inputs())
            total += out.ce.item() * b.scored
            count += b.scored
        self.model.train()
        return total / count

    def train_step(self, batch: Batch) -> dict:
        batch = batch.to(self.device)
        lr = self.cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self.model(**batch.model_inputs())
        if not torch.isfinite(out.loss):
            where = f"; the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path and \
                self.checkpoint_path.exists() else ""
            raise TrainingDiverged(f"the loss became {out.loss.item()} at step {self.step}{where}. "
                                   "Lower the learning rate or check the data.")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        # Parts that learn outside autograd (DeepSeek-V3's balancing bias) update here, explicitly.
        for module in self.model.modules():
            hook = getattr(module, "after_optimizer_step", None)
            if callable(hook):
                hook()
        record = {"step": self.step, "loss": out.loss.item(), "ce": out.ce.item(), "aux_loss": out.aux_loss.item(),
                  "lr": lr, "grad_norm": float(grad_norm), "tokens": int(batch.scored),
                  "real_tokens": batch.real_tokens, "positions": batch.inputs.numel()}
        record.update(layer_stats(out.aux))
        return record

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train until ``config.steps``; returns the metrics (one dict per step).

        ``stop_after`` ends the run early at that step without a final checkpoint, the way a crash
        would (the schedule still runs to ``config.steps``): for showing and testing resume.
        """
        from tqdm.auto import tqdm

        self.model.train()
        # The bar counts the steps this call means to run: with stop_after, it ends full, not "interrupted".
        last = self.cfg.steps if stop_after is None else max(self.step, min(self.cfg.steps, stop_after))
        bar = tqdm(total=last, initial=self.step, disable=not self.progress, desc="training",
                   unit="step", dynamic_ncols=True)
        start, tokens = time.perf_counter(), 0
        try:
            while self.step < self.cfg.steps:
                if stop_after is not None and self.step >= stop_after:
                    return self.metrics
                record = self.train_step(self.data.batch(self.step))
                tokens += record["real_tokens"]
                # Real (non-PAD) input tokens per second since this fit() began: the work that teaches.
                record["tokens_per_s"] = tokens / max(1e-9, time.perf_counter() - start)
                self.step += 1
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps:
                    val = self.validate()
                    if val is not None:
                        record["val_ce"] = val
                self._log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", real_tok_s=f"{record['tokens_per_s']:.0f}",
                                **({"val": f"{record['val_ce']:.3f}"} if "val_ce" in record else {}))
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self.save()
        finally:
            bar.close()
        if self.out is not None and self.plot_loss:
            plot_metrics(self.metrics, self.out / "loss.png")
        return self.metrics


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics: list[dict], path: str | Path | None = None, ax=None, label: str = ""):
    """Training loss (and validation loss where measured) against step.

    With ``path``, the figure is written there (without touching pyplot's state, so it is safe in a
    script or a notebook); otherwise it is drawn on ``ax`` or on a new pyplot figure.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib comes with the `course` extra
        return None
    fig = None
    if ax is None:
        if path is not None:
            fig = Figure(figsize=(6, 3.5))
            ax = fig.subplots()
        else:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [m["step"] + 1 for m in metrics]
    ax.plot(steps, [m["ce"] for m in metrics], label=f"{label} train".strip(), alpha=0.8)
    val = [(m["step"] + 1, m["val_ce"]) for m in metrics if "val_ce" in m]
    if val:
        ax.plot(*zip(*val), "o-", label=f"{label} validation".strip())
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per scored token")
    ax.legend()
    if path is not None and fig is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    return ax
