"""Expert capacity: how many tokens an expert takes per batch, and which assignments are dropped.

With capacity factor c, each expert takes at most C = ceil(c · N·k / E) of the N·k assignments
(Switch Transformer §2.2). Assignments are served first choices first (every token's slot 0, then
slot 1, ...) and, within a slot, in token order, as GShard does; the rest are dropped. A dropped
assignment contributes nothing: a token that loses all its routed experts passes through the
residual connection (and the shared experts) only. Capacity factor 0 means dropless (DeepSeek-V3
drops no token); any c >= E / k gives C >= N, so nothing can be dropped and the result is
exactly the dropless one.
"""

from __future__ import annotations

import math

import torch


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """ceil(capacity_factor · n_tokens · k / n_experts); capacity_factor 0 means no limit (n_tokens)."""
    for name, v in (("n_tokens", n_tokens), ("n_experts", n_experts), ("k", k)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "n_tokens" else 1):
            raise ValueError(f"{name}: got {v!r}, need a positive int")
    if not capacity_factor >= 0:
        raise ValueError(f"capacity_factor: got {capacity_factor!r}, need a number >= 0 (0: dropless)")
    if capacity_factor == 0:
        return n_tokens
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


def capacity_keep(topk_idx: torch.Tensor, n_experts: int, capacity: int,
                  token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Which assignments fit. topk_idx: (N, k) -> keep: (N, k) bool (False: dropped).

    An assignment is kept when fewer than ``capacity`` assignments to the same expert come before it
    in the order (slot 0 of every token, then slot 1, ...). With ``token_mask`` (N,) bool, a masked
    token (PAD) is never kept and takes no place in any queue.
    """
    n, k = topk_idx.shape
    order = topk_idx.t().reshape(-1)  # (k·N,): slot-major, token order within a slot
    onehot = torch.zeros(k * n, n_experts, dtype=torch.int64, device=topk_idx.device)
    onehot.scatter_(1, order[:, None], 1)  # (k·N, E)
    if token_mask is not None:
        onehot = onehot * token_mask.reshape(1, n).expand(k, n).reshape(-1, 1)  # PAD joins no queue
    position = (onehot.cumsum(dim=0) * onehot).sum(dim=1)  # (k·N,): 1-based place in its expert's queue
    return ((position >= 1) & (position <= capacity)).view(k, n).t()  # (N, k)
