"""The routed experts: E SwiGLU feed-forwards stored as three stacked weights.

w_gate, w_up: (E, d_model, h); w_down: (E, h, d_model). Expert e computes
down_e(silu(x · gate_e) · (x · up_e)), the dense model's SwiGLU at hidden size h. Stacking lets a
dispatch backend (``minimoe.dispatch``) run all experts as one grouped matmul; the reference
backend loops over them. Fine-grained experts (DeepSeekMoE) are just many small ones: split a
hidden size m·h into m experts of h and route to m·k of them for the same activated width.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.dispatch import expert_ffn


class StackedWeight(nn.Module):
    """One stacked weight, named ``<name>.weight`` like a Linear's so the model's init recognises it."""

    def __init__(self, *shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))
        nn.init.normal_(self.weight, std=0.02)


class Experts(nn.Module):
    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.n_experts, self.d_model, self.hidden = n_experts, d_model, hidden
        self.w_gate = StackedWeight(n_experts, d_model, hidden)  # (E, d, h)
        self.w_up = StackedWeight(n_experts, d_model, hidden)  # (E, d, h)
        self.w_down = StackedWeight(n_experts, hidden, d_model)  # (E, h, d)

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                backend: str = "auto", token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, d), topk_idx and topk_weight: (N, k) -> (N, d): Σ_j weight_j · expert_{idx_j}(x).

        ``token_mask`` (N,) bool: tokens marked False are dispatched to no expert (their row is 0).
        """
        return expert_ffn(x, topk_idx, topk_weight, self.w_gate.weight, self.w_up.weight, self.w_down.weight,
                          backend=backend, token_mask=token_mask)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` alone on x: (..., d) -> (..., d), written out (for references and notebooks)."""
        g, u, dn = self.w_gate.weight[e], self.w_up.weight[e], self.w_down.weight[e]
        return (torch.nn.functional.silu(x @ g) * (x @ u)) @ dn
