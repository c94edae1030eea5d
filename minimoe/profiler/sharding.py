"""Sharding the training state across GPUs: ZeRO stages 1-3, expert and pipeline parallelism.

At scale the factor that dominates memory is not a dtype but a division: each GPU keeps only a
share of the state. With W GPUs (Rajbhandari et al., "ZeRO", arXiv 1910.02054):

- ZeRO-1 splits the optimizer state across the data-parallel group, ZeRO-2 the gradients too,
  ZeRO-3 the weights too (gathered, a layer at a time, when a layer runs);
- expert parallelism (EP) gives each GPU E/ep of each MoE layer's routed experts; the rest of
  the model (attention, norms, shared experts, embeddings) is replicated, so a routed expert's
  data-parallel group is ep times smaller than a dense weight's;
- pipeline parallelism (PP) gives each GPU 1/pp of the layers.

``sharded_memory`` predicts the bytes of weights, gradients and optimizer state per GPU for any
config and layout; ``count_sharded`` builds the course's model in W real ``torch.distributed``
processes (gloo on a CPU), lets each rank keep exactly its share, counts the bytes each one holds
with ``MemoryProfiler``, and checks, by gathering the shards back, that together they are the
model. Each share of a flat buffer is ``ceil(n / group)`` numbers (the last one padded), so the
prediction and the count agree to the byte. AdamW's per-tensor step counters (4 bytes each, on
the CPU) are left out of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minimoe.config import ModelConfig
from minimoe.profiler.estimate import as_config
from minimoe.recipe import count_params


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each piece of training state.

    ``weights``: the copy that trains (fp32 master weights under mixed precision); ``gradients``;
    ``moments``: AdamW's two moments together. ``mixed``: autocast with fp32 weights, gradients and
    moments, 16 bytes per parameter. ``v3``: DeepSeek-V3's choice, the same with bf16 moments, 12.
    """

    weights: int = 4
    gradients: int = 4
    moments: int = 8

    @property
    def per_parameter(self) -> int:
        return self.weights + self.gradients + self.moments


MIXED = Precision(4, 4, 8)
V3 = Precision(4, 4, 4)


@dataclass(frozen=True)
class ShardedBytes:
    """Bytes one GPU holds: weights, gradients, optimizer state (and the parameter counts behind them)."""

    parameters: int
    gradients: int
    optimizer: int
    dense_params: int  # dense parameters this GPU holds before ZeRO (its pipeline stage's)
    expert_params: int  # routed-expert parameters this GPU holds before ZeRO

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer


def expert_parameters(config: ModelConfig | str | dict) -> int:
    """Parameters of the routed experts: what EP splits. Like ``count_params(...).total`` (V3's 671B), this
    leaves out the multi-token-prediction module, which is trained only with the main model."""
    return count_params(as_config(config)).routed_experts


def _check_layout(cfg: ModelConfig, world: int, zero: int, ep: int, pp: int) -> None:
    for name, v in (("world", world), ("ep", ep), ("pp", pp)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}, need an int >= 1")
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero: got {zero!r}, need a ZeRO stage 0, 1, 2 or 3")
    if world % (ep * pp):
        raise ValueError(f"world: got {world}, need a multiple of ep x pp = {ep * pp}")
    if ep > 1 and (not cfg.is_moe or cfg.n_routed_experts % ep):
        raise ValueError(f"ep: got {ep}, need a divisor of the config's {cfg.n_routed_experts} routed experts")


def shard(n: int, group: int) -> int:
    """Numbers one rank keeps of a flat buffer of ``n`` split across ``group`` ranks: ceil(n / group)."""
    return -(-n // group)


def state_per_gpu(dense: int, expert: int, world: int, zero: int = 0, ep: int = 1,
                  precision: Precision = MIXED) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on one of ``world`` data-parallel GPUs that holds ``dense``
    replicated parameters and ``expert`` routed-expert parameters (its own 1/ep of them).

    ZeRO stage ``zero`` shards the optimizer state (1 and up), the gradients (2 and up) and the weights (3)
    within each parameter's data-parallel group: all ``world`` GPUs for a dense parameter, the
    ``world / ep`` GPUs holding the same experts for an expert parameter. A shard of n is ceil(n / group).
    """
    groups = ((dense, world), (expert, world // ep))

    def held(stage: int, per_param: int) -> int:
        return sum((shard(n, g) if zero >= stage else n) * per_param for n, g in groups if n)

    return held(3, precision.weights), held(2, precision.gradients), held(1, precision.moments)


def sharded_memory(config: ModelConfig | str | dict, world: int, zero: int = 0, ep: int = 1, pp: int = 1,
                   precision: Precision = MIXED) -> ShardedBytes:
    """Bytes of weights, gradients and optimizer state on one GPU of ``world``.

    ``zero``: the ZeRO stage (0: none); ``ep``: expert-parallel size (each GPU holds E/ep of every
    MoE layer's routed experts); ``pp``: pipeline stages (each GPU holds 1/pp of the layers, split
    evenly: a prediction, real stages are not quite even). The dense weights' data-parallel group is
    world / pp GPUs; a routed expert's is world / (pp · ep). ZeRO shards within those groups.
    """
    cfg = as_config(config)
    _check_layout(cfg, world, zero, ep, pp)
    expert = expert_parameters(cfg)
    dense = count_params(cfg).total - expert
    dense_here, expert_here = math.ceil(dense / pp), math.ceil(expert / (pp * ep))
    weights, grads, moments = state_per_gpu(dense_here, expert_here, world // pp, zero, ep, precision)
    return ShardedBytes(weights, grads, moments, dense_here, expert_here)


# --- counted: the course's model across real processes ---------------------------------------------------


def _is_expert(name: str) -> bool:
    return ".experts." in name or name.startswith("experts.")


def _held_by_rank(rank: int, world: int, cfg: ModelConfig, layouts: list[tuple[int, int]], seed: int,
                  group=None) -> list[dict]:
    """One rank of ``world``: for each (zero, ep), keep this rank's share of the state, count it, gather it back."""
    import torch.distributed as dist

    from minimoe.model import build_model
    from minimoe.profiler.profiler import MemoryProfiler

    model = build_model(cfg, seed=seed)
    params = [(n, p.detach()) for n, p in model.named_parameters()]
    results = []
    for zero, ep in layouts:
        e_rank, dp_index, dp_size = rank % ep, rank // ep, world // ep  # the expert slice, and its DP group
        with MemoryProfiler() as prof:
            kept = {"dense": [], "expert": []}
            for name, p in params:
                if _is_expert(name):  # (E, ., .): this rank's E/ep experts
                    per = p.shape[0] // ep
                    kept["expert"].append(p[e_rank * per:(e_rank + 1) * per].reshape(-1))
                else:
                    kept["dense"].append(p.reshape(-1))
            state = {}
            for kind, size, index in (("dense", world, rank), ("expert", dp_size, dp_index)):
                if not kept[kind]:
                    continue
                flat = torch.cat(kept[kind])  # every weight of this kind this rank is responsible for
                n = shard(flat.numel(), size)
                mine = torch.nn.functional.pad(flat, (0, n * size - flat.numel()))[index * n:(index + 1) * n].clone()
                weights = mine if zero >= 3 else flat
                grads = torch.zeros(n if zero >= 2 else flat.numel())
                moments = [torch.zeros(n if zero >= 1 else flat.numel()) for _ in range(2)]
                prof.label(weights, "parameters")
                prof.label(grads, "gradients")
                prof.label(moments, "optimizer")
                state[kind] = (flat, mine, size, weights, grads, moments)  # held until counted
        counted = prof.at_exit()
        # together the shards are the model: gather them back (within each DP group) and compare
        whole = True
        for kind, (flat, mine, size, *_held) in state.items():
            pieces = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(pieces, mine, group=group)
            members = range(world) if kind == "dense" else [r for r in range(world) if r % ep == e_rank]
            joined = torch.cat([pieces[r] for r in members])[:flat.numel()]
            whole = whole and len(members) == size and torch.equal(joined, flat)
        results.append({"zero": zero, "ep": ep, "parameters": counted["parameters"],
                        "gradients": counted["gradients"], "optimizer": counted["optimizer"], "whole": whole})
        del state, kept
    return results


def _count_worlds(rank: int, world: int, cfg: ModelConfig, plan: list[tuple[int, list]], seed: int) -> dict:
    """Every world size of ``plan`` in one launch: ranks 0..w-1 form a group of w (all ranks create it)."""
    import torch.distributed as dist

    out = {}
    for w, layouts in plan:
        group = dist.new_group(list(range(w))) if w < world else None
        if rank < w:
            out[w] = _held_by_rank(rank, w, cfg, layouts, seed, group)
    return out


def default_layouts(config: ModelConfig | str | dict, world: int) -> list[tuple[int, int]]:
    """ZeRO 0-3 without expert parallelism, and, for an MoE config, each stage with ep = world."""
    cfg = as_config(config)
    return [(z, 1) for z in range(4)] + ([(z, world) for z in range(4)] if cfg.is_moe else [])


def count_sharded(config: ModelConfig | str | dict, worlds: tuple[int, ...] = (2, 4), seed: int = 0,
                  timeout_s: float = 300.0) -> dict[int, list[list[dict]]]:
    """Count, in real processes (gloo), the fp32 bytes each rank holds, for each world size in ``worlds``
    and each layout of ``default_layouts``.

    Returns ``{world: [rank 0's rows, rank 1's rows, ...]}``, one row per (zero, ep) layout:
    ``parameters``, ``gradients``, ``optimizer`` (bytes, counted by ``MemoryProfiler``) and ``whole``
    (the shards gathered back equal the model). One launch of max(worlds) processes serves every
    world size (a smaller world is a subgroup). Compare with ``sharded_memory(config, world, zero, ep)``.
    """
    from minimoe.parallel import launch

    cfg = as_config(config)
    if not worlds or any(not isinstance(w, int) or w < 1 for w in worlds):
        raise ValueError(f"worlds: got {worlds!r}, need world sizes (ints >= 1)")
    plan = [(w, default_layouts(cfg, w)) for w in sorted(set(worlds))]
    for w, layouts in plan:
        for zero, ep in layouts:
            _check_layout(cfg, w, zero, ep, 1)
    per_rank = launch(_count_worlds, max(worlds), (cfg, plan, seed), timeout_s=timeout_s)
    return {w: [per_rank[r][w] for r in range(w)] for w, _ in plan}
