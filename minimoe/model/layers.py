"""The small layers of a decoder: RMSNorm, rotary position embedding (RoPE), SwiGLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight (Zhang & Sennrich, arXiv 1910.07467). No mean, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., dim)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # the same formula, one fused op
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_angles(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's rotation angles (Su et al., arXiv 2104.09864).

    Pair i of a head's ``dim`` channels turns by ``position · theta^(-2i/dim)``.
    positions: (T,) integers -> cos, sin: (T, dim // 2), in float32 (any shape: (..., dim // 2)).
    """
    if dim % 2:
        raise ValueError(f"dim: got {dim}, need an even number of channels to rotate in pairs")
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)  # (dim/2,)
    angles = positions.float()[..., None] * inv_freq  # (..., T, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + dim/2]) of x: (B, H, T, dim) by the angles (T, dim/2)
    (or (B, 1, T, dim/2): one set of positions per row)."""
    half = x.shape[-1] // 2
    xf = x if x.dtype == torch.float32 else x.float()
    x1, x2 = xf[..., :half], xf[..., half:]  # (B, H, T, dim/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out if out.dtype == x.dtype else out.to(x.dtype)


class SwiGLU(nn.Module):
    """The gated feed-forward of LLaMA and DeepSeek: down(silu(gate(x)) · up(x)) (Shazeer, arXiv 2002.05202)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_model)
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
