"""Load balancing: the losses that push a router to spread tokens, and DeepSeek-V3's bias update.

Left alone, a router collapses: the experts that win early get more tokens, learn faster and win
more. Three remedies and one stability loss, each a small function (N tokens, E experts, k per token):

- ``switch_aux_loss``: E · Σ_i f_i · P_i (Switch Transformer eq. 4; GShard), with f_i the fraction
  of the N·k assignments that went to expert i and P_i the mean router probability of expert i.
  It is exactly 1 under perfectly uniform routing, but that is not its minimum: for a fixed
  routing it can fall to E · min_i f_i, below 1 whenever the load is uneven. Its gradient reaches
  the router through P only (f comes from a top-k and has none), ∂/∂P_i = E · f_i, which moves
  probability from the overloaded experts toward the underloaded ones: a force, not a distance.
- ``z_loss``: mean over tokens of logsumexp(logits)² (ST-MoE, arXiv 2202.08906 eq. 5): a stability
  loss, not a balance loss. It keeps the router's logits small, so its softmax stays numerically
  tame; shrinking every logit leaves each token's top-k, and so the load, unchanged.
- ``sequence_balance_loss``: DeepSeek-V3's complementary sequence-wise loss (eq. 17-20): the same
  f·P product, but per sequence, with the affinities normalized per token; averaged over sequences.
- ``bias_update``: DeepSeek-V3's auxiliary-loss-free balancing (§2.1.2): after each step, each
  expert's bias moves by γ against the sign of its load error (overloaded: -γ, underloaded: +γ).
  No gradient: it is a plain update outside autograd, so it never trades off against the LM loss.

Every function takes an optional ``token_mask`` (N,) bool: positions marked False (PAD) count in
no load, no mean and no loss, so padding a batch changes none of these numbers.

Under expert parallelism each rank sees one share of the batch. A loss is not an average of the
ranks' losses (a product of means is not a mean of products), so each loss also takes the whole
batch's totals (``totals``, ``n_all``): it then returns this share's part of the whole batch's
loss. The parts sum, over the shares, to the one-process loss, and so do their gradients.
"""

from __future__ import annotations

import torch


def check_token_mask(token_mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``token_mask`` flattened to (N,) bool, or None; ValueError unless it has N entries."""
    if token_mask is None:
        return None
    if not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool or token_mask.numel() != n:
        got = f"shape {tuple(token_mask.shape)} {token_mask.dtype}" if isinstance(token_mask, torch.Tensor) \
            else type(token_mask).__name__
        raise ValueError(f"token_mask: got {got}, need a bool tensor with one entry per token ({n})")
    return token_mask.reshape(n)


def masked_mean(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 0 of x (N, ...) counting only the rows ``token_mask`` (N,) marks (all, without one)."""
    if token_mask is None:
        return x.mean(dim=0)
    m = token_mask.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (N, 1, ...)
    return (x * m).sum(dim=0) / m.sum().clamp_min(1)


def expert_counts(topk_idx: torch.Tensor, n_experts: int, keep: torch.Tensor | None = None,
                  token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """How many (token, slot) assignments each expert got. topk_idx: (N, k) -> (E,) float32.

    ``keep`` (N, k) bool, if given, counts only the assignments that were kept (not dropped);
    ``token_mask`` (N,) bool counts only real tokens. Computed with ``scatter_add_`` into zeros,
    which never reads a device value back (``bincount`` does, to size its output).
    """
    w = torch.ones(topk_idx.shape, dtype=torch.float32, device=topk_idx.device)  # (N, k)
    if keep is not None:
        w = w * keep
    mask = check_token_mask(token_mask, topk_idx.shape[0])
    if mask is not None:
        w = w * mask[:, None]
    counts = torch.zeros(n_experts, dtype=torch.float32, device=topk_idx.device)
    return counts.scatter_add_(0, topk_idx.reshape(-1).long().clamp(0, n_experts - 1), w.reshape(-1))  # (E,)


def switch_aux_loss(probs: torch.Tensor, topk_idx: torch.Tensor, token_mask: torch.Tensor | None = None,
                    totals: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """E · Σ_i f_i · P_i. probs: (N, E) router probabilities; topk_idx: (N, k) -> scalar.

    f_i = (assignments to i) / (N·k), P_i = mean_n probs[n, i], both over real tokens only.
    Uniform routing gives exactly 1.

    ``totals`` = (counts (E,), real tokens ()) of the whole batch when these N tokens are one share
    of it: f comes from the whole batch's counts, P_i = Σ_{these n} probs[n, i] / (its real tokens),
    and the result is this share's part of the whole batch's loss.
    """
    if probs.dim() != 2 or topk_idx.dim() != 2 or probs.shape[0] != topk_idx.shape[0]:
        raise ValueError(f"probs, topk_idx: got shapes {tuple(probs.shape)}, {tuple(topk_idx.shape)}, "
                         "need (tokens, experts) and (tokens, k)")
    n, e = probs.shape
    mask = check_token_mask(token_mask, n)
    if totals is not None:
        counts_all, n_all = totals
        if tuple(counts_all.shape) != (e,):
            raise ValueError(f"totals: got counts of shape {tuple(counts_all.shape)}, need ({e},)")
        f = counts_all.float() / counts_all.float().sum().clamp_min(1)  # (E,) of the whole batch
        m = torch.ones(n, device=probs.device) if mask is None else mask.float()
        p = (probs.float() * m[:, None]).sum(dim=0) / n_all.float().clamp_min(1)  # (E,) this share's part of P
        return e * (f * p).sum()
    counts = expert_counts(topk_idx, e, token_mask=mask)  # (E,)
    f = counts / counts.sum().clamp_min(1)  # (E,) sums to 1, no gradient
    p = masked_mean(probs.float(), mask)  # (E,) sums to 1, differentiable
    return e * (f * p).sum()


def z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None,
           n_all: torch.Tensor | None = None) -> torch.Tensor:
    """mean_n logsumexp(logits[n])² over real tokens. logits: (N, E) -> scalar.

    ``n_all``: the whole batch's real tokens when these are one share of it (the sum over this
    share, divided by ``n_all``)."""
    mask = check_token_mask(token_mask, logits.shape[0])
    z = logits.float().logsumexp(dim=-1).pow(2)  # (N,)
    if n_all is not None:
        return (z if mask is None else z * mask).sum() / n_all.float().clamp_min(1)
    return masked_mean(z, mask)


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_sequences: int,
                          token_mask: torch.Tensor | None = None, n_all: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """DeepSeek-V3 eq. 17-20, averaged over sequences (the caller multiplies by α).

    scores: (B·T, E) affinities (V3: sigmoid; any non-negative scores work), tokens laid out sequence
    by sequence; topk_idx: (B·T, k). Per sequence, over its T real tokens: f_i = E/(k·T) ·
    (assignments to i), P_i = mean_t s_i,t / Σ_j s_j,t; loss = Σ_i f_i · P_i (1 under uniform
    routing). A sequence is a row of the batch (a packed row holds several samples, as V3's
    packed training sequences do); rows with no real token are left out of the average.
    ``n_all``: the whole batch's rows with a real token, when these rows are one share of it.
    """
    nt, e = scores.shape
    if not isinstance(n_sequences, int) or n_sequences < 1 or nt % n_sequences:
        raise ValueError(f"n_sequences: got {n_sequences!r}, need a divisor of the {nt} tokens")
    t, k = nt // n_sequences, topk_idx.shape[1]
    mask = check_token_mask(token_mask, nt)
    m = torch.ones(nt, device=scores.device) if mask is None else mask.float()  # (B·T,)
    s = scores.float() / scores.float().sum(dim=-1, keepdim=True)  # (B·T, E) normalized per token
    real = m.view(n_sequences, t).sum(dim=1)  # (B,) real tokens per sequence
    p = (s * m[:, None]).view(n_sequences, t, e).sum(dim=1) / real.clamp_min(1)[:, None]  # (B, E)
    onehot = torch.zeros(nt, e, device=scores.device).scatter_(1, topk_idx, 1.0) * m[:, None]  # (B·T, E)
    f = onehot.view(n_sequences, t, e).sum(dim=1) * e / (k * real.clamp_min(1)[:, None])  # (B, E)
    has = (real > 0).float()  # (B,)
    rows = has.sum() if n_all is None else n_all.float()
    return ((f * p).sum(dim=-1) * has).sum() / rows.clamp_min(1)


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
