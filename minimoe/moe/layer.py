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

from typing import Callable

import torch
from torch import nn

from minimoe.config import ModelConfig
from minimoe.dispatch.backends import check_backend
from minimoe.model.layers import SwiGLU
from minimoe.moe.balance import bias_update, expert_counts, sequence_balance_loss, switch_aux_loss, z_loss
from minimoe.moe.capacity import capacity_keep, expert_capacity
from minimoe.moe.experts import Experts
from minimoe.moe.router import Router
from minimoe.moe.stats import load_stats


class MoELayer(nn.Module):
    takes_token_mask = True  # Block hands it the batch's token mask (PAD positions are not routed)

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        if not cfg.is_moe:
            raise ValueError(f"cfg: {cfg.name!r} has n_routed_experts=0; an MoE layer needs experts")
        self.cfg, self.backend = cfg, check_backend(backend)
        self.router = Router(cfg)
        self.experts = Experts(cfg.n_routed_experts, cfg.d_model, cfg.expert_hidden)
        self.shared = SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.expert_hidden) if cfg.n_shared_experts else None
        self._pending_counts: torch.Tensor | None = None  # tokens per expert since the last bias update
        # None: this layer sees the whole batch. Under expert parallelism each rank sees one share of
        # it, and this sums a tensor over the shares (an all-reduce): the balance losses then use the
        # whole batch's counts, and each rank's loss is its part of the one-process loss.
        self.sum_over_shares: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None,
                stats: bool = True) -> tuple[torch.Tensor, dict]:
        """x: (B, T, d_model) -> (y (B, T, d_model), aux).

        ``token_mask`` (B, T) bool marks real tokens; a position marked False (PAD) is routed to no
        expert, gets no routed output, and counts in no load, no balance loss and no bias update.
        ``stats=False`` (decoding) skips the statistics and losses, which nobody reads there.
        """
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(f"x: got shape {tuple(x.shape)}, need (batch, time, d_model={self.cfg.d_model})")
        cfg, (b, t, d) = self.cfg, x.shape
        if token_mask is not None and (not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool
                                       or tuple(token_mask.shape) != (b, t)):
            got = f"shape {tuple(token_mask.shape)} {token_mask.dtype}" if isinstance(token_mask, torch.Tensor) \
                else type(token_mask).__name__
            raise ValueError(f"token_mask: got {got}, need ({b}, {t}) bool like x's (batch, time)")
        flat = x.reshape(b * t, d)  # (N, d)
        mask = None if token_mask is None else token_mask.reshape(b * t)  # (N,)
        route = self.router(flat)  # idx, weight: (N, k); logits, probs: (N, E). PAD rows are ignored below.
        n, k = route.topk_idx.shape
        e = cfg.n_routed_experts
        weight = route.topk_weight  # (N, k)
        keep = None
        if cfg.capacity_factor > 0:
            n_real = n if mask is None else int(mask.sum())  # capacity is a size: reading it back is unavoidable
            keep = capacity_keep(route.topk_idx, e, expert_capacity(n_real, e, k, cfg.capacity_factor), mask)  # (N, k)
            # A dropped assignment gets gate weight 0, which removes its term from the sum exactly
            # (and its gradient); a production kernel would also skip the work.
            weight = weight * keep
        if mask is not None:
            weight = weight * mask[:, None]  # (N, k): PAD gets nothing from any expert
        y = self.experts(flat, route.topk_idx, weight.to(flat.dtype), self.backend, token_mask=mask)  # (N, d)
        if self.shared is not None:
            y = y + self.shared(flat)
        if not stats:
            return y.view(b, t, d), {}

        counts = expert_counts(route.topk_idx, e, token_mask=mask)  # (E,) real tokens, before any dropping
        n_assign = counts.sum()
        n_dropped = 0 if keep is None else n_assign - expert_counts(route.topk_idx, e, keep, mask).sum()
        aux: dict = load_stats(counts, route.probs.detach(), n_dropped, n_assign, mask)
        counts_all = n_all = rows_all = None
        if self.sum_over_shares is not None and (cfg.aux_loss_coef or cfg.z_loss_coef or cfg.seq_aux_coef):
            n_real = torch.full((), n, dtype=torch.float32, device=x.device) if mask is None else mask.sum().float()
            rows = torch.full((), b, dtype=torch.float32, device=x.device) if mask is None else \
                mask.view(b, t).any(dim=1).sum().float()
            summed = self.sum_over_shares(torch.cat([counts, n_real[None], rows[None]]))  # one exchange: (E + 2,)
            counts_all, n_all, rows_all = summed[:e], summed[e], summed[e + 1]
        balance = switch_aux_loss(route.probs, route.topk_idx, mask,
                                  None if counts_all is None else (counts_all, n_all))
        aux["balance_loss"] = balance.detach()
        loss = None
        if cfg.aux_loss_coef:
            loss = cfg.aux_loss_coef * balance
        if cfg.z_loss_coef:
            z = z_loss(route.logits, mask, n_all)
            aux["z_loss"] = z.detach()
            loss = cfg.z_loss_coef * z if loss is None else loss + cfg.z_loss_coef * z
        if cfg.seq_aux_coef:
            scores = route.logits.sigmoid() if cfg.router == "sigmoid" else route.probs
            seq = sequence_balance_loss(scores, route.topk_idx, b, mask, rows_all)
            aux["seq_balance_loss"] = seq.detach()
            loss = cfg.seq_aux_coef * seq if loss is None else loss + cfg.seq_aux_coef * seq
        if loss is not None:
            aux["loss"] = loss
        idx = route.topk_idx if mask is None else route.topk_idx.masked_fill(~mask[:, None], -1)  # -1: not routed
        aux["topk_idx"] = idx.view(b, t, k)
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
    check_backend(backend)
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for m in layers:
        m.backend = backend
    return len(layers)
