"""Per-step load statistics of a routed layer: who got how many tokens, and how sure the router was.

The trainer logs every scalar entry (averaged over MoE layers, as ``ffn/<key>``):

- ``max_load``, ``min_load``: the busiest and idlest expert's share over the mean share
  (1 and 1 when balanced). With top-k an expert takes at most one of each token's k slots, so
  max_load <= E/k, reached when the same k experts take every token (total collapse): 16/3 for
  16 experts, top-3; only top-1 can reach E;
- ``load_cv``: the coefficient of variation of the counts (0 when balanced);
- ``router_entropy``: the mean entropy of each token's distribution over experts, in nats
  (ln E when the router has no preference, 0 when it is certain);
- ``dropped``: the fraction of assignments dropped by the capacity limit;
- ``balance_loss``: E · Σ f_i · P_i, unweighted, whatever the coefficient (1 = uniform).

``load`` (E,) is the fraction of assignments per expert, kept as a tensor for plots.
"""

from __future__ import annotations

import torch

from minimoe.moe.balance import check_token_mask, masked_mean


def router_entropy(probs: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (real) tokens of -Σ_i p_i ln p_i. probs: (N, E) rows summing to 1 -> scalar (nats)."""
    p = probs.float()
    return masked_mean(-(p * p.clamp_min(1e-12).log()).sum(dim=-1), check_token_mask(token_mask, p.shape[0]))


@torch.no_grad()
def load_stats(counts: torch.Tensor, probs: torch.Tensor, n_dropped: int | torch.Tensor = 0,
               n_assignments: int | torch.Tensor | None = None,
               token_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The statistics above from the routed counts (E,) (before dropping) and the probabilities (N, E).

    ``counts`` must already count real tokens only; ``token_mask`` (N,) keeps PAD out of the entropy.
    Every entry stays a tensor on the device (nothing is read back to the host here).
    """
    counts = counts.float()
    total = counts.sum().clamp_min(1)
    mean = counts.mean().clamp_min(1e-12)
    n_assignments = total if n_assignments is None else torch.as_tensor(n_assignments, dtype=torch.float32)
    return {
        "load": counts / total,  # (E,)
        "max_load": counts.max() / mean,
        "min_load": counts.min() / mean,
        "load_cv": counts.std(unbiased=False) / mean,
        "router_entropy": router_entropy(probs, token_mask),
        "dropped": torch.as_tensor(n_dropped, dtype=torch.float32, device=counts.device)
        / torch.as_tensor(n_assignments, device=counts.device).clamp_min(1),
    }
