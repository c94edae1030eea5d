"""The router: a score per (token, expert), the top-k experts per token, and their gate weights.

Each router here follows its paper exactly (N tokens, E experts, k experts per token):

- ``softmax_router``: probabilities p = softmax(logits) over all E experts; the k largest are
  chosen and their p are the gate weights, optionally renormalized to sum to 1.
  Switch Transformer (arXiv 2101.03961) is k = 1 without renormalizing (the gate is p, not 1);
  GShard (arXiv 2006.16668) is k = 2 renormalized; DeepSeekMoE (arXiv 2401.06066) does not renormalize.
- ``mixtral_router``: Mixtral (arXiv 2401.04088) takes the top-k *logits* and a softmax over those k.
  That is the same numbers as ``softmax_router(..., renormalize=True)``; the test suite shows it.
- ``sigmoid_router``: DeepSeek-V3 (arXiv 2412.19437, eq. 12-16): affinities s = sigmoid(logits);
  a per-expert bias b is added to s *only to choose* the top-k; the gate weights are the unbiased
  s of the chosen experts, normalized to sum to 1, times a routed scaling factor. Optionally
  group-limited: experts sit in groups, and each token first picks its best groups (V3 sends each
  token to at most 4 of its 8 nodes), then its k experts inside them.

``Router`` is the module: one ``d_model x E`` weight (no bias parameter; V3's bias is a buffer that
``minimoe.moe.balance.bias_update`` moves outside autograd), reading the settings from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ModelConfig


def _check_logits(logits: torch.Tensor, k: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        got = f"shape {tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: got {got}, need a (tokens, experts) floating-point tensor")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k: got {k!r}, need an int in 1..{logits.shape[1]} (the number of experts)")


def group_limited_mask(scores: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Which experts each token may choose when it first picks its ``topk_groups`` best groups.

    scores: (N, E) selection scores; the E experts sit in ``n_groups`` consecutive groups. A group's
    score is the sum of its two best experts' scores (its best one's when a group has one expert),
    as in DeepSeek-V3's ``Gate``. Returns (N, E) bool, True for experts in a chosen group.
    """
    n, e = scores.shape
    if n_groups < 1 or e % n_groups:
        raise ValueError(f"n_groups: got {n_groups!r}, need a divisor of the {e} experts")
    if not 1 <= topk_groups <= n_groups:
        raise ValueError(f"topk_groups: got {topk_groups!r}, need 1..n_groups={n_groups}")
    grouped = scores.view(n, n_groups, e // n_groups)  # (N, G, E/G)
    best = min(2, e // n_groups)
    group_score = grouped.topk(best, dim=-1).values.sum(-1)  # (N, G)
    chosen = group_score.topk(topk_groups, dim=-1).indices  # (N, topk_groups)
    group_ok = torch.zeros(n, n_groups, dtype=torch.bool, device=scores.device).scatter_(1, chosen, True)
    return group_ok[:, :, None].expand(n, n_groups, e // n_groups).reshape(n, e)  # (N, E)


def _select(select_scores: torch.Tensor, k: int, n_groups: int, topk_groups: int) -> torch.Tensor:
    """The k best experts per token by ``select_scores`` (N, E), inside the chosen groups if grouped."""
    if n_groups:
        allowed = group_limited_mask(select_scores, n_groups, topk_groups)  # (N, E)
        select_scores = select_scores.masked_fill(~allowed, float("-inf"))
    return select_scores.topk(k, dim=-1).indices  # (N, k)


def softmax_router(logits: torch.Tensor, k: int, renormalize: bool = False, bias: torch.Tensor | None = None,
                   scaling: float = 1.0, n_groups: int = 0, topk_groups: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts, then top-k. logits: (N, E) -> (topk_weight (N, k), topk_idx (N, k)).

    ``bias`` (E,), if given, is added to the probabilities for choosing only (as V3 does with its
    sigmoid); the weights stay the unbiased probabilities.
    """
    _check_logits(logits, k)
    probs = logits.float().softmax(dim=-1)  # (N, E)
    if bias is None and not n_groups:  # choosing by the probabilities themselves: topk gives both
        weight, idx = probs.topk(k, dim=-1)  # (N, k) each
    else:
        select = probs if bias is None else probs + bias.float()
        idx = _select(select, k, n_groups, topk_groups)  # (N, k)
        weight = probs.gather(1, idx)  # (N, k)
    if renormalize:
        weight = weight / weight.sum(dim=-1, keepdim=True)
    return (weight * scaling if scaling != 1 else weight), idx


def mixtral_router(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral: the top-k logits, then a softmax over just those k. -> (topk_weight, topk_idx), each (N, k)."""
    _check_logits(logits, k)
    top, idx = logits.float().topk(k, dim=-1)  # (N, k) each
    return top.softmax(dim=-1), idx


def sigmoid_router(logits: torch.Tensor, k: int, bias: torch.Tensor | None = None, scaling: float = 1.0,
                   n_groups: int = 0, topk_groups: int = 0, renormalize: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's gate. logits: (N, E), bias: (E,) or None -> (topk_weight (N, k), topk_idx (N, k)).

    s = sigmoid(logits) (eq. 15); choose top-k of s + b (eq. 16, the bias chooses only);
    g = s of the chosen, / their sum (eq. 13), times ``scaling`` (V3's routed scaling factor 2.5).
    """
    _check_logits(logits, k)
    if bias is not None and tuple(bias.shape) != (logits.shape[1],):
        raise ValueError(f"bias: got shape {tuple(bias.shape)}, need ({logits.shape[1]},), one per expert")
    scores = logits.float().sigmoid()  # (N, E) affinities in (0, 1)
    select = scores if bias is None else scores + bias.float()
    idx = _select(select.detach(), k, n_groups, topk_groups)  # (N, k): no gradient flows through choosing
    weight = scores.gather(1, idx)  # (N, k): the unbiased affinities
    if renormalize:
        weight = weight / weight.sum(dim=-1, keepdim=True)
    return weight * scaling, idx


def router_probs(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Each token's distribution over experts, (N, E): the softmax, or V3's affinities normalized to sum to 1.

    This is the P of the balance losses and the distribution whose entropy the statistics report.
    """
    if kind == "softmax":
        return logits.float().softmax(dim=-1)
    scores = logits.float().sigmoid()
    return scores / scores.sum(dim=-1, keepdim=True)


@dataclass
class RouterOutput:
    logits: torch.Tensor  # (N, E) raw router logits, float32
    topk_idx: torch.Tensor  # (N, k) chosen experts
    topk_weight: torch.Tensor  # (N, k) their gate weights
    kind: str = "softmax"  # the router's rule, which decides ``probs``

    @cached_property
    def probs(self) -> torch.Tensor:
        """(N, E) each token's distribution over experts (``router_probs``), computed when first read:
        the balance losses and statistics read it, decoding does not."""
        return router_probs(self.logits, self.kind)


class Router(nn.Module):
    """logits = x · W (W: ``d_model x E``, no bias parameter), then the config's routing rule."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.is_moe:
            raise ValueError(f"cfg: {cfg.name!r} has n_routed_experts=0; a router needs experts")
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.d_model))  # (E, d), as nn.Linear stores it
        nn.init.normal_(self.weight, std=0.02)
        # DeepSeek-V3's balancing bias: chooses experts, never weights them, and learns outside autograd.
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts), persistent=True)
        # (E,) bool or None: experts this router may not choose (minimoe.moe.ablation switches them off).
        self.switched_off: torch.Tensor | None = None

    @property
    def uses_bias(self) -> bool:
        return self.cfg.bias_update_rate > 0

    def forward(self, x: torch.Tensor) -> RouterOutput:  # x: (N, d_model)
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())  # (N, E), in fp32 as routers usually are
        bias = self.bias if self.uses_bias else None
        if self.switched_off is not None:  # a bias of -inf: never chosen; the weights stay the unbiased scores
            block = torch.zeros_like(self.bias).masked_fill(self.switched_off, float("-inf"))
            bias = block if bias is None else bias + block
        kwargs = dict(bias=bias, scaling=cfg.routed_scaling, n_groups=cfg.n_expert_groups,
                      topk_groups=cfg.topk_groups)
        if cfg.router == "sigmoid":
            weight, idx = sigmoid_router(logits, cfg.top_k, renormalize=cfg.router_renormalize, **kwargs)
        else:
            weight, idx = softmax_router(logits, cfg.top_k, renormalize=cfg.router_renormalize, **kwargs)
        return RouterOutput(logits, idx, weight, cfg.router)
