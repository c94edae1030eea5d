"""Expert parallelism: MapReduce for experts, on real ``torch.distributed`` processes.

Experts are sharded across ranks: rank r holds experts [r·E/W, (r+1)·E/W). One MoE step is

- **map**: each rank routes its own tokens (top-k experts each);
- **shuffle**: an all-to-all sends each token to the ranks that hold its experts, once per rank
  however many of its experts live there, with those experts' ids and gate weights. The counts go
  first, so every rank knows how much it will receive;
- **reduce**: each rank runs its local experts on what it received (``minimoe.dispatch``) and sums
  each row's experts, weighted, right there (a combiner, in MapReduce's words); a second all-to-all
  returns one row per (token, rank) to the token's home, which adds them up.

Both all-to-alls are differentiable (``torch.distributed.nn.functional``), so the backward pass
runs the same exchange in reverse. It works with gloo between CPU processes and NCCL between GPUs,
launched by ``torchrun`` or by ``launch`` below (``torch.multiprocessing``); there is no transport
of our own. Node-limited routing (``limit_ranks``) confines each token to at most M ranks, as
DeepSeek-V3 confines each token to 4 nodes, which cuts the bytes exchanged.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from minimoe.dispatch import expert_ffn


class _AllToAll(torch.autograd.Function):
    """torch.distributed's all_to_all_single, made differentiable: the backward pass sends each
    gradient back along the way its row came (the same exchange with the splits swapped)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, recv_splits: list[int], send_splits: list[int], group: Any) -> torch.Tensor:
        ctx.splits, ctx.group = (recv_splits, send_splits), group
        out = x.new_empty(sum(recv_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        recv_splits, send_splits = ctx.splits
        out = grad.new_empty(sum(send_splits), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), send_splits, recv_splits, group=ctx.group)
        return out, None, None, None


def all_to_all(x: torch.Tensor, recv_splits: list[int], send_splits: list[int], group: Any = None) -> torch.Tensor:
    """Send rows ``x[sum(send_splits[:r]) : ...]`` to rank r; receive ``recv_splits[r]`` rows from it."""
    return _AllToAll.apply(x, recv_splits, send_splits, group)


def experts_per_rank(n_experts: int, world: int) -> int:
    if world < 1 or n_experts % world:
        raise ValueError(f"n_experts: got {n_experts}, need a multiple of the world size {world}")
    return n_experts // world


@dataclass
class CommStats:
    """What one exchange moved. ``bytes_sent`` counts rows leaving for other ranks, both directions."""

    rows_sent: list[int] = field(default_factory=list)  # (token, rank) rows per destination, dispatch leg
    rows_received: list[int] = field(default_factory=list)  # rows per source rank, dispatch leg
    bytes_sent: int = 0  # everything this rank sends to other ranks: counts, rows, ids, weights, results


def exchange_plan(topk_idx: torch.Tensor, n_experts: int, world: int, token_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which (token, rank) pairs must travel: one per token and destination rank.

    topk_idx: (N, k) -> pair_token (P,), pair_rank (P,) sorted by rank (stable), send_counts (world,).
    ``token_mask`` (N,) bool: masked tokens (PAD) travel nowhere.
    """
    per_rank = experts_per_rank(n_experts, world)
    n, k = topk_idx.shape
    dest = topk_idx // per_rank  # (N, k): the rank holding each chosen expert
    hit = torch.zeros(n, world, dtype=torch.bool, device=topk_idx.device)
    hit[torch.arange(n, device=topk_idx.device)[:, None].expand(n, k), dest] = True  # (N, world)
    if token_mask is not None:
        hit &= token_mask[:, None]
    pair_token, pair_rank = hit.nonzero(as_tuple=True)  # ordered by token, then rank
    order = torch.argsort(pair_rank, stable=True)  # group by destination rank
    pair_token, pair_rank = pair_token[order], pair_rank[order]
    return pair_token, pair_rank, torch.bincount(pair_rank, minlength=world)


def ep_expert_ffn(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                  w_up: torch.Tensor, w_down: torch.Tensor, n_experts: int, group: Any = None,
                  backend: str = "auto", stats: CommStats | None = None,
                  token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The expert-parallel twin of ``minimoe.dispatch.expert_ffn``.

    x: (N, d) this rank's tokens; topk_idx, topk_weight: (N, k) with global expert ids;
    w_gate, w_up: (E/W, d, h) and w_down: (E/W, h, d): this rank's experts; ``token_mask`` (N,)
    bool: PAD (False) is sent nowhere and gets 0. Returns (N, d).
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    per_rank = experts_per_rank(n_experts, world)
    if w_gate.shape[0] != per_rank:
        raise ValueError(f"w_gate: got {w_gate.shape[0]} experts, need n_experts / world = {per_rank}")
    if topk_idx.numel() and (int(topk_idx.min()) < 0 or int(topk_idx.max()) >= n_experts):
        raise ValueError(f"topk_idx: ids must be in [0, {n_experts})")
    n, d = x.shape
    k = topk_idx.shape[1]
    pair_token, pair_rank, send_counts = exchange_plan(topk_idx, n_experts, world, token_mask)

    # What travels with each (token, rank) pair: its k expert ids, local to that rank (-1 where the
    # expert lives elsewhere), and the matching gate weights (0 there).
    local_ids = topk_idx[pair_token] - pair_rank[:, None] * per_rank  # (P, k)
    here = (local_ids >= 0) & (local_ids < per_rank)
    local_ids = torch.where(here, local_ids, torch.full_like(local_ids, -1))
    weights = torch.where(here, topk_weight[pair_token], torch.zeros_like(topk_weight[pair_token]))  # (P, k)

    # Shuffle, part 1: the counts, so that every rank can size what it receives.
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()
    n_recv = sum(recv_splits)

    # Shuffle, part 2: token rows (differentiable), expert ids, gate weights (differentiable).
    recv_x = all_to_all(x[pair_token], recv_splits, send_splits, group)  # (R, d)
    recv_ids = torch.empty(n_recv, k, dtype=local_ids.dtype, device=x.device)
    dist.all_to_all_single(recv_ids, local_ids.contiguous(), recv_splits, send_splits, group=group)
    recv_w = all_to_all(weights, recv_splits, send_splits, group)  # (R, k)

    # Reduce, here: each received row through its local experts, weighted and summed (a combiner).
    valid = recv_ids >= 0
    ids = torch.where(valid, recv_ids, torch.zeros_like(recv_ids))  # padding slots: expert 0, weight 0
    y = expert_ffn(recv_x, ids, recv_w * valid, w_gate, w_up, w_down, backend=backend)  # (R, d)
    if torch.is_grad_enabled():
        # A rank that received no rows computes nothing, which would cut its autograd graph, skip the
        # backward all-to-alls and leave every other rank waiting. A zero term keeps it connected.
        y = y + 0.0 * (recv_x.sum() + recv_w.sum())

    # Back to each token's home rank, then add up the rows of every rank that served it.
    back = all_to_all(y, send_splits, recv_splits, group)  # (P, d), in pair order
    out = torch.zeros(n, d, dtype=torch.float32, device=x.device).index_add(0, pair_token, back.float())

    if stats is not None:  # measured from the buffers handed to all_to_all_single
        out_rows = sum(c for r, c in enumerate(send_splits) if r != rank)
        back_rows = sum(c for r, c in enumerate(recv_splits) if r != rank)
        dispatch_row = d * x.element_size() + k * (local_ids.element_size() + weights.element_size())
        stats.rows_sent, stats.rows_received = send_splits, recv_splits
        stats.bytes_sent = ((world - 1) * send_counts.element_size() + out_rows * dispatch_row
                            + back_rows * d * y.element_size())
    return out.to(x.dtype)


def predicted_bytes(topk_by_rank: list[torch.Tensor], n_experts: int, rank: int, d_model: int,
                    element_size: int = 4) -> int:
    """Bytes ``rank`` sends to other ranks in one step, from every rank's routing: the counts; one
    row per (own token, other rank) holding the token, its k expert ids (8 bytes each) and k gate
    weights; and one result row of d_model back for every row other ranks sent it."""
    world = len(topk_by_rank)
    k = topk_by_rank[rank].shape[1]
    _, own_dest, _ = exchange_plan(topk_by_rank[rank], n_experts, world)
    out_rows = int((own_dest != rank).sum())
    back_rows = sum(int((exchange_plan(t, n_experts, world)[1] == rank).sum()) for r, t in enumerate(topk_by_rank)
                    if r != rank)
    counts = 8 * (world - 1)
    return counts + out_rows * (d_model * element_size + k * 8 + k * element_size) + back_rows * d_model * element_size


def limit_ranks(scores: torch.Tensor, k: int, world: int, max_ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node-limited top-k: pick each token's ``max_ranks`` best ranks (by the sum of their two best
    expert scores, as DeepSeek-V3 ranks nodes), then its top-k experts within them.

    scores: (N, E) routing scores -> (topk_idx, topk_weight), weights normalized to sum to 1.
    """
    n, e = scores.shape
    per_rank = experts_per_rank(e, world)
    if not 1 <= max_ranks <= world:
        raise ValueError(f"max_ranks: got {max_ranks}, need 1..{world}")
    if k > max_ranks * per_rank:
        raise ValueError(f"k: got {k}, but {max_ranks} ranks hold only {max_ranks * per_rank} experts")
    grouped = scores.view(n, world, per_rank)
    rank_score = grouped.topk(min(2, per_rank), dim=-1).values.sum(-1)  # (N, world)
    keep = torch.zeros(n, world, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, rank_score.topk(max_ranks, dim=-1).indices, True)
    masked = scores.masked_fill(~keep.repeat_interleave(per_rank, dim=1), float("-inf"))
    top = masked.topk(k, dim=-1)
    return top.indices, top.values.softmax(dim=-1)


# --- launching processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple, out_dir: str, timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException as e:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:  # the first file written is the cause
            f.write(f"{time.time()!r}\n{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        raise
    finally:
        dist.destroy_process_group()


class DistributedError(RuntimeError):
    """A rank failed; the message names the first rank to fail and why."""


def launch(fn: Callable, world: int, args: tuple = (), timeout_s: float = 60.0) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` processes joined by torch.distributed; return each
    rank's result (which must be plain data: tensors, numbers, lists, dicts).

    ``fn`` must be importable (defined in a module, not in a notebook cell). A rank that fails ends
    the whole run with its error, never a hang: collectives time out after ``timeout_s`` seconds.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world: got {world!r}, need an int >= 1")
    with tempfile.TemporaryDirectory(prefix="minimoe-ep-") as out_dir:
        try:
            mp.start_processes(_entry, args=(world, _free_port(), fn, args, out_dir, timeout_s), nprocs=world,
                               join=True, start_method="spawn")
        except ProcessException as e:  # the others were stopped; say who failed first, and why
            errors = []
            for r in range(world):
                path = os.path.join(out_dir, f"rank{r}.err")
                if os.path.exists(path):
                    stamp, message = open(path).read().split("\n", 1)
                    errors.append((float(stamp), r, message))
            if not errors:
                raise DistributedError(f"a rank died without a Python error ({e})") from None
            errors.sort()
            _, first, why = errors[0]
            also = "; then " + "; ".join(f"rank {r}: {m}" for _, r, m in errors[1:]) if errors[1:] else ""
            raise DistributedError(f"rank {first} failed first: {why}{also}") from None
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]


# --- a worker the tests and chapter 09 share ---------------------------------------------------------


def compare_with_one_process(rank: int, world: int, n_experts: int = 8, d: int = 16, h: int = 24, k: int = 2,
                             tokens: int = 12, seed: int = 0, max_ranks: int | None = None,
                             idle_rank: int | None = None, fail_rank: int | None = None) -> dict:
    """Run one expert-parallel step on this rank and the same step in one process; return the gaps.

    Every rank draws the same weights and every rank's tokens (seeded), so each can compute the
    single-process reference for the whole batch and compare its own slice: the output, the input
    gradient, the gate-weight gradient and its local experts' weight gradients. ``idle_rank``
    routes no token to that rank's experts; ``fail_rank`` raises there mid-step.
    """
    per_rank = experts_per_rank(n_experts, world)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(n_experts, d, h, generator=g) * d ** -0.5, torch.randn(n_experts, d, h, generator=g) * d ** -0.5,
               torch.randn(n_experts, h, d, generator=g) * h ** -0.5]
    xs, idxs, ws, cots = [], [], [], []
    for r in range(world):
        n_r = tokens + r  # uneven loads: every rank has a different number of tokens
        x = torch.randn(n_r, d, generator=g)
        scores = torch.randn(n_r, n_experts, generator=g)
        if idle_rank is not None:
            scores[:, idle_rank * per_rank:(idle_rank + 1) * per_rank] = float("-inf")
        if max_ranks is not None:
            idx, w = limit_ranks(scores, k, world, max_ranks)
        else:
            top = scores.topk(k, dim=-1)
            idx, w = top.indices, top.values.softmax(-1)
        xs.append(x), idxs.append(idx), ws.append(w), cots.append(torch.randn(n_r, d, generator=g))

    # This rank's part, expert-parallel.
    x = xs[rank].clone().requires_grad_(True)
    w = ws[rank].clone().requires_grad_(True)
    local = [p[rank * per_rank:(rank + 1) * per_rank].clone().requires_grad_(True) for p in weights]
    if fail_rank == rank:
        raise RuntimeError(f"rank {rank} failed on purpose, mid-step")
    stats = CommStats()
    out = ep_expert_ffn(x, idxs[rank], w, *local, n_experts=n_experts, stats=stats)
    (out * cots[rank]).sum().backward()

    # The whole batch in one process.
    x_all = torch.cat(xs).requires_grad_(True)
    w_all = torch.cat(ws).requires_grad_(True)
    full = [p.clone().requires_grad_(True) for p in weights]
    ref = expert_ffn(x_all, torch.cat(idxs), w_all, *full)
    (ref * torch.cat(cots)).sum().backward()
    start = sum(tokens + r for r in range(rank))
    mine = slice(start, start + tokens + rank)

    def gap(a: torch.Tensor | None, b: torch.Tensor) -> float:
        a = torch.zeros_like(b) if a is None else a  # an expert no token reached gets no gradient
        return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0

    return {
        "out": gap(out, ref[mine].detach()),
        "dx": gap(x.grad, x_all.grad[mine]),
        "dweight": gap(w.grad, w_all.grad[mine]),
        "dexperts": max(gap(p.grad, q.grad[rank * per_rank:(rank + 1) * per_rank]) for p, q in zip(local, full)),
        "rows_sent": stats.rows_sent,
        "rows_received": stats.rows_received,
        "bytes_sent": stats.bytes_sent,
        "bytes_predicted": predicted_bytes(idxs, n_experts, rank, d, x.element_size()),
    }


# --- MoE layers and training, expert-parallel --------------------------------------------------------


class ShardedExperts(torch.nn.Module):
    """This rank's slice of a ``minimoe.moe`` Experts module, computing through ``ep_expert_ffn``."""

    def __init__(self, experts: torch.nn.Module, rank: int, world: int, group: Any = None):
        super().__init__()
        self.n_experts, self.group = experts.n_experts, group
        per = experts_per_rank(self.n_experts, world)
        mine = slice(rank * per, (rank + 1) * per)
        for name in ("w_gate", "w_up", "w_down"):
            holder = torch.nn.Module()
            holder.weight = torch.nn.Parameter(getattr(experts, name).weight[mine].detach().clone())
            setattr(self, name, holder)
        self.stats = CommStats()

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                backend: str = "auto", token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return ep_expert_ffn(x, topk_idx, topk_weight, self.w_gate.weight, self.w_up.weight, self.w_down.weight,
                             self.n_experts, self.group, backend, self.stats, token_mask)


def shard_experts(model: torch.nn.Module, rank: int, world: int, group: Any = None) -> int:
    """Keep only this rank's experts in every MoE layer of ``model``; returns how many layers changed."""
    from minimoe.moe import MoELayer

    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for layer in layers:
        layer.experts = ShardedExperts(layer.experts, rank, world, group)
    return len(layers)


def _is_expert(name: str) -> bool:
    return ".experts.w_" in name


def train_worker(rank: int, world: int, preset_name: str, steps: int, batch_size: int, seed: int = 0,
                 lr: float = 3e-3, n_train: int = 2000, out: str | None = None,
                 dispatch: str = "auto") -> list[float]:
    """Train an MoE preset with its experts sharded over ``world`` ranks; each rank takes every
    world-th (packed) row of the global batch, and its local experts compute through ``dispatch``.
    Returns the global loss of every step.

    The loss is normalized by the scored tokens of the whole batch, so summing the replicated
    parameters' gradients over ranks (all-reduce) gives exactly the one-process gradient, and each
    expert's gradient is already complete: every token that used it sent its gradient back.
    """
    from minimoe.config import preset
    from minimoe.model import build_model
    from minimoe.model.transformer import cross_entropy  # noqa: F401  (the one-process loss, for reference)
    from minimoe.moe import MoELayer, set_dispatch_backend
    from minimoe.train import TrainConfig, make_optimizer, mixture_batches, save_checkpoint

    cfg = preset(preset_name)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    model = build_model(cfg, seed=seed)
    if not shard_experts(model, rank, world):
        raise ValueError(f"preset: {preset_name!r} has no MoE layers to shard")
    set_dispatch_backend(model, dispatch)
    model.to(device)
    tcfg = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup=min(10, steps))
    data = mixture_batches(n_train=n_train, n_val=0, batch_size=batch_size, seed=seed)
    opt = make_optimizer(model, tcfg)
    losses = []
    for step in range(steps):
        batch = data.batch(step).to(device)
        rows = slice(rank, None, world)
        inputs, targets, mask = batch.inputs[rows], batch.targets[rows], batch.loss_mask[rows]
        total = mask.sum().float()
        dist.all_reduce(total)
        out_ = model(inputs, token_mask=batch.token_mask[rows], segments=batch.segments[rows])
        per_token = torch.nn.functional.cross_entropy(out_.logits.float().flatten(0, 1), targets.flatten(),
                                                      reduction="none")
        loss = (per_token * mask.flatten()).sum() / total + out_.aux_loss / world
        for group_ in opt.param_groups:
            group_["lr"] = tcfg.lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        replicated_sq, expert_sq = torch.zeros((), device=device), torch.zeros((), device=device)
        for name, p in model.named_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if _is_expert(name):
                expert_sq += p.grad.pow(2).sum()
            else:
                dist.all_reduce(p.grad)  # sum of every rank's share of the batch
                replicated_sq += p.grad.pow(2).sum()
        dist.all_reduce(expert_sq)
        norm = (replicated_sq + expert_sq).sqrt()
        if norm > tcfg.grad_clip:
            for p in model.parameters():
                p.grad.mul_(tcfg.grad_clip / (norm + 1e-6))
        opt.step()
        for layer in model.modules():  # the balancing bias needs the load of the whole batch
            if isinstance(layer, MoELayer):
                if layer._pending_counts is not None:
                    dist.all_reduce(layer._pending_counts)
                layer.after_optimizer_step()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        losses.append(global_loss.item())
    if out is not None:  # gather the experts and save one ordinary checkpoint from rank 0
        full = build_model(cfg, seed=seed)
        state = {}
        for name, p in model.named_parameters():
            if _is_expert(name):
                parts = [torch.empty_like(p) for _ in range(world)]
                dist.all_gather(parts, p.detach().contiguous())
                state[name] = torch.cat(parts)
            else:
                state[name] = p.detach()
        state = {n: t.cpu() for n, t in state.items()}
        state.update({n: b.cpu() for n, b in model.named_buffers()})
        if rank == 0:
            full.load_state_dict(state)
            save_checkpoint(os.path.join(out, "checkpoint.pt"), full, step=steps, train_config=tcfg,
                            data=data.describe(), extra={"dispatch": dispatch, "expert_parallel": world})
    return losses


def main(argv: list[str] | None = None) -> None:
    """Expert-parallel training under ``torchrun`` (one process per GPU, across machines too)::

        torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m minimoe.parallel \\
            --preset tiny-moe --steps 1000 --out runs/ep

    On one machine, ``minimoe train --expert-parallel N`` starts the processes itself.
    """
    import argparse

    p = argparse.ArgumentParser(prog="torchrun ... -m minimoe.parallel")
    p.add_argument("--preset", default="tiny-moe")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16, help="packed rows of 256 positions per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--dispatch", choices=("auto", "torch", "triton", "loop"), default="auto",
                   help="how each rank's experts compute (default: auto)")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        p.error("run me under torchrun (it sets RANK and WORLD_SIZE), or use `minimoe train --expert-parallel N`")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=300))
    try:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        losses = train_worker(dist.get_rank(), dist.get_world_size(), args.preset, args.steps, args.batch_size,
                              args.seed, args.lr, args.samples, args.out, args.dispatch)
        if dist.get_rank() == 0:
            print(f"step {len(losses)}: loss {losses[-1]:.4f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
