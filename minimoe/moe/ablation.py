"""Switching experts off: what a model loses when its router may not choose some experts.

An ablation asks whether experts specialise: switch off the experts one domain uses most and see
whether that domain's loss rises more than the others'. ``experts_switched_off(model, {block: [e,
...]})`` is a context manager; inside it each named MoE layer's router may not choose those experts
(their selection score gets a bias of -inf), so every token takes its next-best experts instead and
its gate weights come from the same unbiased scores as always. Nothing is changed for good: on
leaving, the routers choose freely again.

``top_experts(matrix, m)`` reads a domain's m most used experts from a domain x expert matrix
(``minimoe.moe.viz.domain_expert_matrix``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from minimoe.moe.layer import MoELayer


def _moe_blocks(model) -> dict[int, MoELayer]:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"model: got {type(model).__name__}, need a minimoe Transformer")
    return {i: b.ffn for i, b in enumerate(blocks) if isinstance(b.ffn, MoELayer)}


@contextmanager
def experts_switched_off(model, experts: Mapping[int, Iterable[int]]) -> Iterator[None]:
    """Inside the ``with``, the router of MoE block ``i`` may not choose the experts ``experts[i]``.

    ``experts`` maps a block index (as in ``model.blocks``) to expert ids; blocks not named route as
    usual. Each layer must keep at least ``top_k`` experts it may choose.
    """
    layers = _moe_blocks(model)
    if not isinstance(experts, Mapping):
        raise TypeError(f"experts: got {type(experts).__name__}, need a dict block index -> expert ids")
    masks: dict[int, torch.Tensor] = {}
    for block, ids in experts.items():
        if block not in layers:
            raise ValueError(f"experts: block {block!r} is not an MoE layer; the MoE blocks are {sorted(layers)}")
        cfg = layers[block].cfg
        ids = sorted({int(e) for e in ids})
        if any(not 0 <= e < cfg.n_routed_experts for e in ids):
            raise ValueError(f"experts: block {block} got expert ids {ids}, need 0..{cfg.n_routed_experts - 1}")
        if cfg.n_routed_experts - len(ids) < cfg.top_k:
            raise ValueError(f"experts: block {block} would keep {cfg.n_routed_experts - len(ids)} experts, "
                             f"need at least top_k={cfg.top_k}")
        router = layers[block].router
        mask = torch.zeros(cfg.n_routed_experts, dtype=torch.bool, device=router.bias.device)
        mask[ids] = True
        masks[block] = mask
    before = {i: layer.router.switched_off for i, layer in layers.items()}
    try:
        for block, mask in masks.items():
            layers[block].router.switched_off = mask
        yield
    finally:
        for i, layer in layers.items():
            layer.router.switched_off = before[i]


def top_experts(matrix: torch.Tensor, m: int) -> list[list[int]]:
    """matrix: (domains, E) shares -> for each domain (row), its ``m`` most used experts, busiest first."""
    matrix = torch.as_tensor(matrix)
    if matrix.dim() != 2:
        raise ValueError(f"matrix: got shape {tuple(matrix.shape)}, need (domains, experts)")
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= matrix.shape[1]:
        raise ValueError(f"m: got {m!r}, need an int in 1..{matrix.shape[1]} (the number of experts)")
    # A stable sort: ties go to the lower expert id, so the choice is the same on every machine.
    order = torch.sort(matrix.float(), dim=1, descending=True, stable=True).indices  # (domains, E)
    return order[:, :m].tolist()
