"""Profile one training step of a preset, next to its prediction: what ``minimoe profile`` runs."""

from __future__ import annotations

from typing import Callable

import torch

from minimoe.config import ModelConfig
from minimoe.profiler.estimate import MemoryEstimate, as_config, as_dtype, estimate_memory
from minimoe.profiler.profiler import MemoryProfiler


def make_step_optimizer(model: torch.nn.Module, optimizer: str | None = "adamw",
                        state_dtype: torch.dtype | None = None) -> torch.optim.Optimizer | None:
    """The trainer's AdamW layout (decay on matrices only, ``minimoe.model.param_groups``), or with
    ``state_dtype`` its bf16-moment twin; "sgd"; None. Learning rates do not change a byte of memory."""
    from minimoe.model import param_groups

    if optimizer is None:
        return None
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-2)
    if optimizer != "adamw":
        raise ValueError(f"optimizer: got {optimizer!r}, need 'adamw', 'sgd' or None")
    groups = param_groups(model, weight_decay=0.1)
    if state_dtype is None or state_dtype == next(model.parameters()).dtype:
        return torch.optim.AdamW(groups, lr=1e-3)
    from minimoe.profiler.techniques import AdamWBF16

    return AdamWBF16(groups, lr=1e-3, state_dtype=state_dtype)


def profile_step(step: Callable[[], None], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 device: str | torch.device = "cpu", crosscheck: bool = False) -> MemoryProfiler:
    """Run ``step`` once under a ``MemoryProfiler`` watching ``model`` and ``optimizer``: the profiler
    observes a step it is handed, whoever wrote it (``Trainer.train_step``, a notebook, a benchmark)."""
    if not callable(step):
        raise TypeError(f"step: got {type(step).__name__}, need a function of no arguments")
    with MemoryProfiler(model, optimizer, device=device, crosscheck=crosscheck) as prof:
        step()
    return prof


def profile_training_step(config: ModelConfig | str | dict, batch: int = 8, seq_len: int = 128,
                          dtype: torch.dtype | str = torch.float32, checkpointing: bool = False,
                          optimizer: str | None = "adamw", state_dtype: torch.dtype | str | None = None,
                          device: str = "cpu", crosscheck: bool = False, seed: int = 0,
                          backend: str | None = None,
                          autocast: torch.dtype | str | None = None) -> tuple[MemoryProfiler, MemoryEstimate]:
    """Build the model, create the optimizer's state (one step on zero gradients), then profile a step.

    The profiled step is what training repeats: ``model(tokens, targets).loss.backward()`` and
    ``optimizer.step()``, gradients set to None before it. Returns ``(profiler, estimate)``.
    ``backend``: the MoE dispatch backend (MoE configs only). ``autocast``: mixed precision, the
    forward under ``torch.autocast(device, autocast)`` while the weights (the master copy), their
    gradients and AdamW's state stay in ``dtype`` (fp32): how models are trained in practice.
    ``dtype="bfloat16"`` alone is pure bf16 training (weights, gradients and Adam in bf16).
    """
    from minimoe.model import build_model

    cfg = as_config(config)
    dtype = as_dtype(dtype)
    state = as_dtype(state_dtype, "state_dtype") if state_dtype is not None else None
    compute = as_dtype(autocast, "autocast") if autocast is not None else None
    est = estimate_memory(cfg, batch, seq_len, optimizer, dtype, checkpointing, state_dtype=state, device=device,
                          autocast=compute)
    model = build_model(cfg, seed=seed).to(device=device, dtype=dtype)
    if backend is not None:
        from minimoe.moe import set_dispatch_backend

        set_dispatch_backend(model, backend)
    model.checkpointing = checkpointing
    opt = make_step_optimizer(model, optimizer, state)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T) each

    def step() -> None:
        if compute is None:
            loss = model(inputs, targets=targets).loss
        else:
            with torch.autocast(torch.device(device).type, dtype=compute):
                loss = model(inputs, targets=targets).loss
        loss.backward()
        if opt is not None:
            opt.step()

    if opt is not None:  # a step on zero gradients creates the optimizer's state, as any first step would
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return profile_step(step, model, opt, device, crosscheck), est


def compare(prof: MemoryProfiler, est: MemoryEstimate) -> list[tuple[str, int, int]]:
    """(what, predicted, measured) rows: the steady categories at the end of the step, the
    activations when backward starts (and at their most, with checkpointing), and the peak against
    its lower bound ``MemoryEstimate.peak_lower`` (backward's working tensors and the optimizer's
    temporaries come on top of it)."""
    last, most = prof.at_exit(), prof.max_by_category()
    rows = [("parameters", est.parameters, last["parameters"]), ("gradients", est.gradients, last["gradients"]),
            ("optimizer", est.optimizer, last["optimizer"])]
    if est.kv_cache:
        rows.append(("kv_cache", est.kv_cache, last["kv_cache"]))
    rows.append(("activations", est.activations, prof.at_phase_end("forward")["activations"]))
    if est.rebuilt:  # checkpointing: one rebuilt block at most on top, an upper bound
        rows.append(("act. + rebuilt", est.activations + est.rebuilt, most["activations"]))
    rows.append(("peak (>=)", est.peak_lower, prof.peak))
    return rows


def format_comparison(prof: MemoryProfiler, est: MemoryEstimate) -> str:
    from minimoe.profiler.report import nbytes

    lines = [f"{'':<14} {'predicted':>11} {'measured':>11}  difference"]
    for what, p, m in compare(prof, est):
        diff = "exact" if p == m else f"{(m - p) / p:+.2%}" if p else f"{m - p:+d} B"
        lines.append(f"{what:<14} {nbytes(p):>11} {nbytes(m):>11}  {diff}")
    return "\n".join(lines)
