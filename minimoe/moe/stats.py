"""Per-step load statistics of a routed layer: who got how many tokens, and how sure the router was.

The trainer logs every scalar entry (averaged over MoE layers, as ``ffn/<key>``):

- ``max_load``, ``min_load``: the busiest and idlest expert's share over the mean share
  (1 and 1 when balanced; max_load = E when one expert takes everything);
- ``load_cv``: the coefficient of variation of the counts (0 when balanced);
- ``router_entropy``: the mean entropy of each token's distribution over experts, in nats
  (ln E when the router has no preference, 0 when it is certain);
- ``dropped``: the fraction of assignments dropped by the capacity limit;
- ``balance_loss``: E · Σ f_i · P_i, unweighted, whatever the coefficient (1 = uniform).

``load`` (E,) is the fraction of assignments per expert, kept as a tensor for plots.
"""

from __future__ import annotations

import torch


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of -Σ_i p_i ln p_i. probs: (N, E) rows summing to 1 -> scalar (nats)."""
    p = probs.float()
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()


@torch.no_grad()
def load_stats(counts: torch.Tensor, probs: torch.Tensor, n_dropped: int | torch.Tensor = 0,
               n_assignments: int | None = None) -> dict[str, torch.Tensor]:
    """The statistics above from the routed counts (E,) (before dropping) and the probabilities (N, E)."""
    counts = counts.float()
    total = counts.sum().clamp_min(1)
    mean = counts.mean().clamp_min(1e-12)
    n_assignments = int(total.item()) if n_assignments is None else n_assignments
    return {
        "load": counts / total,  # (E,)
        "max_load": counts.max() / mean,
        "min_load": counts.min() / mean,
        "load_cv": counts.std(unbiased=False) / mean,
        "router_entropy": router_entropy(probs),
        "dropped": torch.as_tensor(n_dropped, dtype=torch.float32) / max(1, n_assignments),
    }
