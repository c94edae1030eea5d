"""Two memory techniques the profiler measures that PyTorch does not ship as such.

- fp8 storage of weights: ``Fp8Linear`` keeps a Linear's weight as ``float8_e4m3fn`` (1 byte a
  number) with one fp32 scale per output row, and dequantizes it to the compute dtype for each
  matmul. DeepSeek-V3 (arXiv 2412.19437, its "FP8 Training" section) stores and multiplies in fp8 with finer, 1×128 and
  128×128, scales; this is the storage half of that idea, in a form a CPU can run.
- ``AdamWBF16``: AdamW whose two moments are stored in bfloat16 while the weights stay fp32, as
  DeepSeek-V3 does (its report's "FP8 Training" section, paragraph "Low-Precision Optimizer
  States": the first and second moments of AdamW are tracked in BF16 instead of FP32). The update
  itself is computed in fp32.

Activation checkpointing is a switch on the model (``Transformer.checkpointing = True``); mixed
precision is ``torch.autocast`` around the forward with the weights left in fp32
(``profile_training_step(..., autocast="bfloat16")``); pure bf16 training is
``model.to(torch.bfloat16)``: nothing to add here for those.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448: the largest float8_e4m3fn number


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: (out, in) -> (q: (out, in) float8_e4m3fn, scale: (out, 1) fp32) with w ≈ q · scale, row by row."""
    if w.dim() != 2:
        raise ValueError(f"w: got shape {tuple(w.shape)}, need a (out, in) matrix")
    scale = w.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # (out, 1)
    q = (w.detach().float() / scale).to(FP8)  # each row's largest |w| lands on ±448
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


class Fp8Linear(nn.Module):
    """y = x · dequantize(W)ᵀ: the weight stored in fp8 with per-row scales, no bias, computed in x's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear) or linear.bias is not None:
            raise ValueError("linear: need an nn.Linear without bias (minimoe's layers have none)")
        q, scale = quantize_fp8(linear.weight)
        # Parameters that do not train: they count as the model's weights, like the Linear's did.
        self.weight_fp8 = nn.Parameter(q, requires_grad=False)  # (out, in), 1 byte each
        self.scale = nn.Parameter(scale, requires_grad=False)  # (out, 1), fp32
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        return F.linear(x, dequantize_fp8(self.weight_fp8, self.scale, x.dtype))


def to_fp8_storage(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (for inference) with every bias-free Linear stored in fp8; the rest unchanged."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None:
                setattr(module, child_name, Fp8Linear(child))
    return model.requires_grad_(False)


class AdamWBF16(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter, arXiv 1711.05101) with both moments stored in ``state_dtype``.

    Per parameter it keeps ``exp_avg`` and ``exp_avg_sq`` in bf16 and, like ``torch.optim.AdamW``,
    a float32 step counter on the CPU. Each step reads the moments into fp32, updates them, computes
    the step in fp32 and stores the moments back, rounded to bf16.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, state_dtype: torch.dtype = torch.bfloat16):
        if not lr > 0:
            raise ValueError(f"lr: got {lr!r}, need a positive number")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas: got {betas!r}, need two numbers in [0, 1)")
        if not state_dtype.is_floating_point:
            raise ValueError(f"state_dtype: got {state_dtype}, need a floating-point dtype")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, state_dtype=state_dtype))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)  # on the CPU, as torch.optim.AdamW
                    state["exp_avg"] = torch.zeros_like(p, dtype=group["state_dtype"])
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=group["state_dtype"])
                state["step"] += 1
                t = float(state["step"])
                g = p.grad.float()
                m = state["exp_avg"].float().lerp_(g, 1 - b1)  # m ← β1·m + (1-β1)·g
                v = state["exp_avg_sq"].float().mul_(b2).addcmul_(g, g, value=1 - b2)  # v ← β2·v + (1-β2)·g²
                state["exp_avg"].copy_(m)
                state["exp_avg_sq"].copy_(v)
                update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt_().add_(eps))
                p.mul_(1 - lr * wd).add_(update.to(p.dtype), alpha=-lr)
        return loss
