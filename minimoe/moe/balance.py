"""Load balancing: the losses that push a router to spread tokens, and DeepSeek-V3's bias update.

Left alone, a router collapses: the experts that win early get more tokens, learn faster and win
more. Four remedies, each a small function (N tokens, E experts, k per token):

- ``switch_aux_loss``: E · Σ_i f_i · P_i (Switch Transformer eq. 4; GShard), with f_i the fraction
  of the N·k assignments that went to expert i and P_i the mean router probability of expert i.
  It is 1 when routing is perfectly uniform and grows with imbalance; gradient reaches the router
  through P (f comes from a top-k and has none).
- ``z_loss``: mean over tokens of logsumexp(logits)² (ST-MoE, arXiv 2202.08906 eq. 5): keeps the
  router's logits small, so its softmax stays numerically tame.
- ``sequence_balance_loss``: DeepSeek-V3's complementary sequence-wise loss (eq. 17-20): the same
  f·P product, but per sequence, with the affinities normalized per token; averaged over sequences.
- ``bias_update``: DeepSeek-V3's auxiliary-loss-free balancing (§2.1.2): after each step, each
  expert's bias moves by γ against the sign of its load error (overloaded: -γ, underloaded: +γ).
  No gradient: it is a plain update outside autograd, so it never trades off against the LM loss.
"""

from __future__ import annotations

import torch


def expert_counts(topk_idx: torch.Tensor, n_experts: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """How many (token, slot) assignments each expert got. topk_idx: (N, k) -> (E,) float32.

    ``keep`` (N, k) bool, if given, counts only the assignments that were kept (not dropped).
    """
    flat = topk_idx.reshape(-1)
    w = None if keep is None else keep.reshape(-1).float()
    return torch.bincount(flat, weights=w, minlength=n_experts).float()  # (E,)


def switch_aux_loss(probs: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """E · Σ_i f_i · P_i. probs: (N, E) router probabilities; topk_idx: (N, k) -> scalar.

    f_i = (assignments to i) / (N·k), P_i = mean_n probs[n, i]. Uniform routing gives exactly 1.
    """
    if probs.dim() != 2 or topk_idx.dim() != 2 or probs.shape[0] != topk_idx.shape[0]:
        raise ValueError(f"probs, topk_idx: got shapes {tuple(probs.shape)}, {tuple(topk_idx.shape)}, "
                         "need (tokens, experts) and (tokens, k)")
    n, e = probs.shape
    f = expert_counts(topk_idx, e) / topk_idx.numel()  # (E,) sums to 1, no gradient
    p = probs.float().mean(dim=0)  # (E,) sums to 1, differentiable
    return e * (f * p).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean_n logsumexp(logits[n])². logits: (N, E) -> scalar."""
    return logits.float().logsumexp(dim=-1).pow(2).mean()


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_sequences: int) -> torch.Tensor:
    """DeepSeek-V3 eq. 17-20, averaged over sequences (the caller multiplies by α).

    scores: (B·T, E) affinities (V3: sigmoid; any non-negative scores work), tokens laid out sequence
    by sequence; topk_idx: (B·T, k). Per sequence: f_i = E/(k·T) · (assignments to i),
    P_i = mean_t s_i,t / Σ_j s_j,t; loss = Σ_i f_i · P_i (1 under uniform routing).
    """
    nt, e = scores.shape
    if n_sequences < 1 or nt % n_sequences:
        raise ValueError(f"n_sequences: got {n_sequences!r}, need a divisor of the {nt} tokens")
    t, k = nt // n_sequences, topk_idx.shape[1]
    s = scores.float() / scores.float().sum(dim=-1, keepdim=True)  # (B·T, E) normalized per token
    p = s.view(n_sequences, t, e).mean(dim=1)  # (B, E)
    onehot = torch.zeros(nt, e, device=scores.device).scatter_(1, topk_idx, 1.0)  # (B·T, E)
    f = onehot.view(n_sequences, t, e).sum(dim=1) * e / (k * t)  # (B, E)
    return (f * p).sum(dim=-1).mean()


@torch.no_grad()
def bias_update(bias: torch.Tensor, counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """DeepSeek-V3's aux-loss-free step: b_i + γ · sign(mean load - load_i). Returns the new bias (E,).

    counts: (E,) tokens each expert received in the step. An expert above the mean load gets
    its bias lowered (chosen less), one below gets it raised; one exactly at the mean stays put.
    """
    if tuple(counts.shape) != tuple(bias.shape):
        raise ValueError(f"counts: got shape {tuple(counts.shape)}, need {tuple(bias.shape)} like bias")
    if not gamma >= 0:
        raise ValueError(f"gamma: got {gamma!r}, need a number >= 0")
    error = counts.float().mean() - counts.float()  # (E,) > 0: underloaded
    return bias + gamma * torch.sign(error).to(bias.dtype)
