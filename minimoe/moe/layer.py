"""The mixture-of-experts feed-forward that drops into a chapter-03 block.

y = Σ_{j<k} g_j · expert_{i_j}(x) + Σ shared(x) for each token x (DeepSeekMoE eq. 9; V3 eq. 12):
a router picks k of the E routed experts and their gate weights g, the routed experts run through
``minimoe.dispatch.expert_ffn``, and the always-on shared experts (one SwiGLU of width
n_shared · h, which equals n_shared SwiGLUs of width h summed) see every token.

``forward`` returns ``(y, aux)``: ``aux["loss"]`` is the weighted sum of the balance losses the
config switches on (absent when none is); every other entry is a statistic (``minimoe.moe.stats``)
or, as tensors, the routing itself (``topk_idx``, ``topk_weight``: (B, T, k); ``load``: (E,)).
DeepSeek-V3's bias learns in ``after_optimizer_step``, which the trainer calls after each step.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.config import ModelConfig
from minimoe.model.layers import SwiGLU
from minimoe.moe.balance import bias_update, expert_counts, sequence_balance_loss, switch_aux_loss, z_loss
from minimoe.moe.capacity import capacity_keep, expert_capacity
from minimoe.moe.experts import Experts
from minimoe.moe.router import Router
from minimoe.moe.stats import load_stats


class MoELayer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: str = "loop"):
        super().__init__()
        if not cfg.is_moe:
            raise ValueError(f"cfg: {cfg.name!r} has n_routed_experts=0; an MoE layer needs experts")
        self.cfg, self.backend = cfg, backend
        self.router = Router(cfg)
        self.experts = Experts(cfg.n_routed_experts, cfg.d_model, cfg.expert_hidden)
        self.shared = SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.expert_hidden) if cfg.n_shared_experts else None
        self._pending_counts: torch.Tensor | None = None  # tokens per expert since the last bias update

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:  # x: (B, T, d_model)
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(f"x: got shape {tuple(x.shape)}, need (batch, time, d_model={self.cfg.d_model})")
        cfg, (b, t, d) = self.cfg, x.shape
        flat = x.reshape(b * t, d)  # (N, d)
        route = self.router(flat)  # idx, weight: (N, k); logits, probs: (N, E)
        n, k = route.topk_idx.shape
        e = cfg.n_routed_experts
        counts = expert_counts(route.topk_idx, e)  # (E,) before any dropping
        weight = route.topk_weight  # (N, k)
        n_dropped = 0
        if cfg.capacity_factor > 0:
            keep = capacity_keep(route.topk_idx, e, expert_capacity(n, e, k, cfg.capacity_factor))  # (N, k)
            n_dropped = int((~keep).sum())
            # A dropped assignment gets gate weight 0, which removes its term from the sum exactly
            # (and its gradient); a production kernel would also skip the work.
            weight = weight * keep
        y = self.experts(flat, route.topk_idx, weight.to(flat.dtype), self.backend)  # (N, d)
        if self.shared is not None:
            y = y + self.shared(flat)

        aux: dict = load_stats(counts, route.probs.detach(), n_dropped, n * k)
        balance = switch_aux_loss(route.probs, route.topk_idx)
        aux["balance_loss"] = balance.detach()
        loss = None
        if cfg.aux_loss_coef:
            loss = cfg.aux_loss_coef * balance
        if cfg.z_loss_coef:
            z = z_loss(route.logits)
            aux["z_loss"] = z.detach()
            loss = cfg.z_loss_coef * z if loss is None else loss + cfg.z_loss_coef * z
        if cfg.seq_aux_coef:
            scores = route.logits.sigmoid() if cfg.router == "sigmoid" else route.probs
            seq = sequence_balance_loss(scores, route.topk_idx, b)
            aux["seq_balance_loss"] = seq.detach()
            loss = cfg.seq_aux_coef * seq if loss is None else loss + cfg.seq_aux_coef * seq
        if loss is not None:
            aux["loss"] = loss
        aux["topk_idx"] = route.topk_idx.view(b, t, k)
        aux["topk_weight"] = weight.detach().view(b, t, k)
        if self.router.uses_bias and self.training and torch.is_grad_enabled():
            self._pending_counts = counts if self._pending_counts is None else self._pending_counts + counts
        return y.view(b, t, d), aux

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """DeepSeek-V3's aux-loss-free balancing: move the bias by γ against each expert's load error."""
        if self.router.uses_bias and self._pending_counts is not None:
            self.router.bias.copy_(bias_update(self.router.bias, self._pending_counts, self.cfg.bias_update_rate))
        self._pending_counts = None


def set_dispatch_backend(model: nn.Module, backend: str) -> int:
    """Make every MoE layer of ``model`` dispatch through ``backend``; returns how many layers changed."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: got {type(backend).__name__}, need a str")
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for m in layers:
        m.backend = backend
    return len(layers)
