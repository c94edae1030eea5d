"""Mixture of experts: routers, experts, load balancing, capacity, and the MoE layer (chapters 04, 05).

One idea per module:

- ``router``: softmax top-k (Switch, GShard, Mixtral), DeepSeek-V3's sigmoid gate with its
  selection-only bias and group-limited routing; the ``Router`` module.
- ``experts``: E SwiGLU experts as stacked weights, run through ``minimoe.dispatch``.
- ``balance``: the Switch/GShard aux loss, the z-loss, V3's sequence-wise loss, V3's bias update.
- ``capacity``: the capacity factor and which assignments it drops.
- ``stats``: per-step load statistics (fraction per expert, max/mean load, entropy, dropped).
- ``layer``: ``MoELayer``, what ``minimoe.model`` builds for the MoE layers of an MoE config.
- ``ablation``: switch experts off (the router may not choose them) to see what a domain loses.
- ``viz``: routing tables, the domain × expert matrix, load plots and the routing explorer widget.
"""

from minimoe.moe.ablation import experts_switched_off, top_experts
from minimoe.moe.balance import bias_update, expert_counts, sequence_balance_loss, switch_aux_loss, z_loss
from minimoe.moe.capacity import capacity_keep, expert_capacity
from minimoe.moe.experts import Experts
from minimoe.moe.layer import MoELayer, set_dispatch_backend
from minimoe.moe.router import (Router, RouterOutput, group_limited_mask, mixtral_router, router_probs,
                                sigmoid_router, softmax_router)
from minimoe.moe.stats import load_stats, router_entropy

__all__ = [
    "Experts", "MoELayer", "Router", "RouterOutput", "bias_update", "capacity_keep", "expert_capacity",
    "expert_counts", "experts_switched_off", "group_limited_mask", "load_stats", "mixtral_router", "router_entropy", "router_probs",
    "sequence_balance_loss", "set_dispatch_backend", "sigmoid_router", "softmax_router", "switch_aux_loss",
    "top_experts", "z_loss",
]
