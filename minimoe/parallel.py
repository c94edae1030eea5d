"""Expert parallelism: MapReduce for experts, on real ``torch.distributed`` processes.

Experts are sharded across ranks: rank r holds experts [r·E/W, (r+1)·E/W). One MoE step is

- **map**: each rank routes its own tokens (top-k experts each);
- **shuffle**: an all-to-all sends each token to the ranks that hold its experts, once per rank
  however many of its experts live there, with those experts' ids and gate weights. The counts go
  first, so every rank knows how much it will receive;
- **reduce**: each rank runs its local experts on what it received (``minimoe.dispatch``) and sums
  each row's experts, weighted, right there (a combiner, in MapReduce's words); a second all-to-all
  returns one row per (token, rank) to the token's home, which adds them up.

Both all-to-alls are differentiable (``all_to_all``, an autograd Function around
``all_to_all_single``), so the backward pass runs the same exchange in reverse. It works with gloo between CPU processes and NCCL between GPUs,
launched by ``torchrun`` or by ``launch`` below (``torch.multiprocessing``); there is no transport
of our own. Node-limited routing (``limit_ranks``) confines each token to at most M ranks, as
DeepSeek-V3 confines each token to 4 nodes, which cuts the bytes exchanged.

Measuring and running:

- ``record_all_to_all``: every ``all_to_all_single`` call in a block, with the bytes of the tensors
  it was handed, per destination rank, forward and backward (``predicted_bytes`` predicts them
  from the routing alone);
- ``launch`` (``fn(rank, world, ...)`` on ranks forked for CPUs, spawned for GPUs) and
  ``call_on_ranks`` (any function, a notebook's included, on forked CPU ranks, with a driver that
  can run its backward pass too);
- ``train_worker``: expert-parallel training that checkpoints and resumes bit for bit, into one
  ordinary checkpoint (experts and their optimizer state gathered); ``main`` runs it under torchrun.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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


def exchange_reference(xs: list[torch.Tensor], send_splits: list[list[int]]) -> list[torch.Tensor]:
    """What an all-to-all delivers, computed in one process, from every rank's rows.

    ``xs[s]`` holds rank s's rows, the first ``send_splits[s][0]`` for rank 0, the next for rank 1,
    and so on. Rank r receives, in rank order, the rows every rank s sends it. The backward pass is
    the same exchange with the splits transposed: ``exchange_reference(grads, recv_splits)`` with
    ``recv_splits[r][s] = send_splits[s][r]``.
    """
    world = len(xs)
    if len(send_splits) != world or any(len(row) != world for row in send_splits):
        raise ValueError(f"send_splits: need {world} lists of {world} counts, one per rank")
    for s, (x, row) in enumerate(zip(xs, send_splits)):
        if sum(row) != x.shape[0]:
            raise ValueError(f"send_splits[{s}]: sums to {sum(row)}, but rank {s} has {x.shape[0]} rows")
    pieces = [x.split(row) for x, row in zip(xs, send_splits)]  # pieces[s][r]: rows s sends to r
    return [torch.cat([pieces[s][r] for s in range(world)]) for r in range(world)]


def experts_per_rank(n_experts: int, world: int) -> int:
    if world < 1 or n_experts % world:
        raise ValueError(f"n_experts: got {n_experts}, need a multiple of the world size {world}")
    return n_experts // world


@dataclass
class CommStats:
    """The plan of the last exchange: rows per rank. (Bytes are measured by ``record_all_to_all``.)"""

    rows_sent: list[int] = field(default_factory=list)  # (token, rank) rows per destination, dispatch leg
    rows_received: list[int] = field(default_factory=list)  # rows per source rank, dispatch leg


@dataclass
class AllToAllRecord:
    """The ``all_to_all_single`` calls one rank made inside ``record_all_to_all``.

    Each call is ``{"phase": "forward" or "backward", "bytes_to": [bytes per destination rank],
    "shape": [...], "dtype": str}``, the bytes read off the input tensor the call was handed (the
    rows of each split times the bytes of one row).
    """

    rank: int
    calls: list[dict] = field(default_factory=list)

    def bytes_sent(self, phase: str | None = None) -> int:
        """Bytes this rank handed over for other ranks (a rank's rows to itself never leave it)."""
        return sum(b for c in self.calls if phase in (None, c["phase"])
                   for r, b in enumerate(c["bytes_to"]) if r != self.rank)

    def bytes_to(self, phase: str | None = None) -> list[int]:
        """Bytes handed over per destination rank (this rank's own entry included)."""
        world = max((len(c["bytes_to"]) for c in self.calls), default=0)
        return [sum(c["bytes_to"][r] for c in self.calls if phase in (None, c["phase"])) for r in range(world)]


@contextmanager
def record_all_to_all() -> Iterator[AllToAllRecord]:
    """Record every ``torch.distributed.all_to_all_single`` call made inside the block, on this rank.

    The collective is wrapped, not imitated: each call still runs, and the record keeps the bytes of
    the input tensor it was handed, split by destination. Calls made while autograd runs the
    backward pass are marked ``"backward"``.
    """
    real = dist.all_to_all_single
    record = AllToAllRecord(rank=dist.get_rank())

    def recording(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        world = dist.get_world_size(group)
        rows = input.shape[0] if input.dim() else 1
        splits = list(input_split_sizes) if input_split_sizes is not None else [rows // world] * world
        row_bytes = math.prod(input.shape[1:]) * input.element_size()
        if sum(splits) * row_bytes != input.numel() * input.element_size():
            raise ValueError(f"all_to_all_single: input of shape {tuple(input.shape)} does not hold the splits {splits}")
        backward = torch._C._current_graph_task_id() != -1
        record.calls.append({"phase": "backward" if backward else "forward", "bytes_to": [n * row_bytes for n in splits],
                             "shape": list(input.shape), "dtype": str(input.dtype)})
        return real(output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op)

    dist.all_to_all_single = recording
    try:
        yield record
    finally:
        dist.all_to_all_single = real


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
    world = dist.get_world_size(group)
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

    if stats is not None:
        stats.rows_sent, stats.rows_received = send_splits, recv_splits
    return out.to(x.dtype)


def predicted_bytes(topk_by_rank: list[torch.Tensor], n_experts: int, rank: int, d_model: int,
                    element_size: int = 4, leg: str = "forward") -> int:
    """Bytes ``rank`` sends to other ranks in one step, from every rank's routing alone.

    ``leg="forward"``: the counts (8 bytes per other rank); one row per (own token, other rank)
    holding the token, its k expert ids (8 bytes each) and k gate weights; and one result row of
    d_model back for every row other ranks sent it. ``leg="backward"``: the same exchanges reversed
    for the gradients, so a result's gradient (d_model) goes out for each row this rank sent, and a
    token's gradient (d_model) and its gate weights' (k) go back for each row it received. Ids and
    counts have no gradient.
    """
    if leg not in ("forward", "backward"):
        raise ValueError(f"leg: got {leg!r}, need 'forward' or 'backward'")
    world = len(topk_by_rank)
    k = topk_by_rank[rank].shape[1]
    _, own_dest, _ = exchange_plan(topk_by_rank[rank], n_experts, world)
    out_rows = int((own_dest != rank).sum())
    back_rows = sum(int((exchange_plan(t, n_experts, world)[1] == rank).sum()) for r, t in enumerate(topk_by_rank)
                    if r != rank)
    if leg == "backward":
        return out_rows * d_model * element_size + back_rows * (d_model + k) * element_size
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


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple, out_dir: str, timeout_s: float,
           backend: str | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException as e:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:  # the first file written is the cause
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            f.write(f"{time.time()!r}\n{type(e).__name__}\n{type(e).__name__}: {first}")
        raise
    finally:
        dist.destroy_process_group()


class DistributedError(RuntimeError):
    """A rank failed; the message names the first rank to fail and why."""


def _first_failure(out_dir: str, world: int, otherwise: str) -> DistributedError | NotImplementedError:
    """The error to raise for a run in which some rank failed: the earliest ``rank*.err`` names it."""
    errors = []
    for r in range(world):
        path = os.path.join(out_dir, f"rank{r}.err")
        if os.path.exists(path):
            stamp, kind, message = open(path).read().split("\n", 2)
            errors.append((float(stamp), r, kind, message))
    if not errors:
        return DistributedError(otherwise)
    errors.sort()
    _, first, kind, why = errors[0]
    if kind == "NotImplementedError":  # an exercise not written yet: say so plainly
        return NotImplementedError(f"rank {first}: {why}")
    also = "; then " + "; ".join(f"rank {r}: {m}" for _, r, _, m in errors[1:]) if errors[1:] else ""
    return DistributedError(f"rank {first} failed first: {why}{also}")


def _results(out_dir: str, world: int) -> list[Any]:
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def _start_method(world: int) -> str:
    """Fork where it is safe and available (CPU ranks, CUDA untouched): no re-import, a second
    instead of several; spawn otherwise (CUDA cannot be used in a process forked after it started)."""
    import multiprocessing

    gpus = torch.cuda.is_available() and torch.cuda.device_count() >= world
    if gpus or torch.cuda.is_initialized() or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


def launch(fn: Callable, world: int, args: tuple = (), timeout_s: float = 60.0,
           start_method: str | None = None) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` processes joined by torch.distributed; return each
    rank's result (which must be plain data: tensors, numbers, lists, dicts).

    ``start_method``: ``"spawn"`` (fresh interpreters: ``fn`` must be importable, defined in a
    module), ``"fork"`` (copies of this process, CPU only), or None: fork for CPU ranks where the
    platform has it, spawn for GPUs. A rank that fails ends the whole run with its error, never a
    hang: collectives time out after ``timeout_s`` seconds.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world: got {world!r}, need an int >= 1")
    if start_method not in (None, "spawn", "fork"):
        raise ValueError(f"start_method: got {start_method!r}, need None, 'spawn' or 'fork'")
    with tempfile.TemporaryDirectory(prefix="minimoe-ep-") as out_dir:
        try:
            mp.start_processes(_entry, args=(world, _free_port(), fn, args, out_dir, timeout_s), nprocs=world,
                               join=True, start_method=start_method or _start_method(world))
        except ProcessException as e:  # the others were stopped; say who failed first, and why
            raise _first_failure(out_dir, world, f"a rank died without a Python error ({e})") from None
        return _results(out_dir, world)


# --- functions defined in a notebook, on forked ranks ----------------------------------------------


def _call(fn: Callable, *args: Any) -> Any:
    return fn(*args)


def _forward_backward(fn: Callable, x: torch.Tensor, *rest: Any) -> dict:
    """``y = fn(x, *rest[:-1])``, then backward with the gradient ``rest[-1]`` (y's shape): y and dL/dx."""
    *more, grad_out = rest
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, *more)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"the function returned a {type(y).__name__}, need a tensor")
    if tuple(y.shape) != tuple(grad_out.shape):
        raise ValueError(f"the function returned shape {tuple(y.shape)}, need {tuple(grad_out.shape)}")
    if not y.requires_grad:
        raise RuntimeError("the result does not require grad: autograd cannot reach x through it")
    y.backward(grad_out)
    return {"y": y.detach(), "dx": x.grad if x.grad is not None else torch.zeros_like(x)}


RANK_DRIVERS: dict[str, Callable] = {"call": _call, "forward_backward": _forward_backward}
RANK_TIMEOUT_S = 20.0  # what the grader gives a student's collective before calling it hung


class _OnRank:
    """What each forked rank runs: ``driver(fn, *args_per_rank[rank])``."""

    def __init__(self, driver: Callable, fn: Callable, args_per_rank: list):
        self.driver, self.fn, self.args_per_rank = driver, fn, args_per_rank

    def __call__(self, rank: int, world: int) -> Any:
        return self.driver(self.fn, *self.args_per_rank[rank])


def call_on_ranks(fn: Callable, world: int, args_per_rank: list, driver: str = "call",
                  timeout_s: float = 30.0) -> list[Any]:
    """Run ``fn`` on ``world`` CPU ranks joined by gloo; rank r gets ``args_per_rank[r]``.

    Unlike ``launch``, ``fn`` may be defined in a notebook: the ranks are forked from this process,
    so they inherit it (Linux and macOS). ``driver="call"`` returns ``fn(*args)`` of each rank;
    ``driver="forward_backward"`` treats the last argument as the gradient of the result and returns
    ``{"y": fn(x, ...), "dx": dL/dx}``. A rank that fails or hangs ends the run within ``timeout_s``
    with a ``DistributedError`` naming the first rank to fail.
    """
    import multiprocessing

    if driver not in RANK_DRIVERS:
        raise ValueError(f"driver: got {driver!r}, need one of {', '.join(RANK_DRIVERS)}")
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ValueError(f"world: got {world!r}, need an int >= 1")
    if not isinstance(args_per_rank, (list, tuple)) or len(args_per_rank) != world:
        raise ValueError(f"args_per_rank: need a list of {world} argument tuples, one per rank")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("call_on_ranks forks processes, which this platform cannot do; use launch()")
    ctx = multiprocessing.get_context("fork")
    task = _OnRank(RANK_DRIVERS[driver], fn, [tuple(a) for a in args_per_rank])
    with tempfile.TemporaryDirectory(prefix="minimoe-ranks-") as out_dir:
        port = _free_port()
        procs = [ctx.Process(target=_entry, args=(r, world, port, task, (), out_dir, timeout_s, "gloo"), daemon=True)
                 for r in range(world)]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout_s + 5
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if hung or any(proc.exitcode != 0 for proc in procs):
            why = f"rank(s) {hung} still ran after {timeout_s:g} s" if hung else "a rank died without a Python error"
            raise _first_failure(out_dir, world, why)
        return _results(out_dir, world)


# --- measuring the exchange ------------------------------------------------------------------------


def time_all_to_all(rank: int, world: int, sizes: list[int], repeats: int = 5) -> list[float]:
    """Seconds one ``all_to_all_single`` takes (the median of ``repeats``) for each message size in
    ``sizes``: the bytes each rank sends in all, split equally among the ranks (float32)."""
    out = []
    for size in sizes:
        n = max(world, size // 4 // world * world)  # float32 numbers, a multiple of world
        x, y = torch.randn(n), torch.empty(n)
        dist.all_to_all_single(y, x)  # warm-up: the first call of a size sets up buffers
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_to_all_single(y, x)
            times.append(time.perf_counter() - start)
        out.append(sorted(times)[len(times) // 2])
    return out


# --- a worker the tests and chapter 09 share ---------------------------------------------------------


def compare_with_one_process(rank: int, world: int, n_experts: int = 8, d: int = 16, h: int = 24, k: int = 2,
                             tokens: int = 12, seed: int = 0, max_ranks: int | None = None,
                             idle_rank: int | None = None, fail_rank: int | None = None) -> dict:
    """Run one expert-parallel step on this rank and the same step in one process; return the gaps.

    Every rank draws the same weights and every rank's tokens (seeded), so each can compute the
    single-process reference for the whole batch and compare its own slice: the output, the input
    gradient, the gate-weight gradient and its local experts' weight gradients. ``idle_rank``
    routes no token to that rank's experts; ``fail_rank`` raises there mid-step.

    The bytes are measured by ``record_all_to_all`` (from the tensors the collective was handed,
    forward and backward) and predicted by ``predicted_bytes`` from every rank's routing.
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
    with record_all_to_all() as sent:  # the bytes of the tensors handed to the collective
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
        "bytes_sent": sent.bytes_sent("forward"),
        "bytes_sent_backward": sent.bytes_sent("backward"),
        "bytes_to": sent.bytes_to(),
        "bytes_predicted": predicted_bytes(idxs, n_experts, rank, d, x.element_size()),
        "bytes_predicted_backward": predicted_bytes(idxs, n_experts, rank, d, x.element_size(), leg="backward"),
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


class _SumOverRanks:
    """Sums a tensor over the ranks of ``group`` (an all-reduce of a detached copy)."""

    def __init__(self, group: Any = None):
        self.group = group

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        dist.all_reduce(t, group=self.group)
        return t


def shard_experts(model: torch.nn.Module, rank: int, world: int, group: Any = None) -> int:
    """Keep only this rank's experts in every MoE layer of ``model``; returns how many layers changed.

    Each MoE layer also learns that it sees one share of the batch (``MoELayer.sum_over_shares``),
    so that its balance losses use the whole batch's counts, as in one process.
    """
    from minimoe.moe import MoELayer

    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for layer in layers:
        layer.experts = ShardedExperts(layer.experts, rank, world, group)
        layer.sum_over_shares = _SumOverRanks(group)
    return len(layers)


def _is_expert(name: str) -> bool:
    return ".experts.w_" in name


def _gather_experts(t: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's slice of an expert tensor, in rank order: (E/W, ...) -> (E, ...), on every rank."""
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)


def _optimizer_entries(opt: torch.optim.Optimizer, model: torch.nn.Module) -> list[bool]:
    """For each parameter in the optimizer's order (its state_dict's indices): is it an expert's?"""
    names = {id(p): n for n, p in model.named_parameters()}
    return [_is_expert(names[id(p)]) for group in opt.param_groups for p in group["params"]]


def _save_expert_parallel(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer, cfg, tcfg, data,
                          step: int, rank: int, world: int, extra: dict) -> None:
    """One ordinary checkpoint from every rank's shard (a collective: every rank calls it).

    The experts' weights and their AdamW moments are gathered along the expert axis; everything
    else is replicated, so rank 0's copy is the copy. The optimizer state is laid out as one
    process's optimizer of the whole model would lay it out (the sharded model lists its parameters
    in the same order), so ``minimoe generate``, one-process ``minimoe train`` and this worker, with
    any number of ranks, all read it.
    """
    from minimoe.model import build_model
    from minimoe.train import make_optimizer, save_checkpoint

    state = {n: (_gather_experts(t, world) if _is_expert(n) else t.detach()).cpu() for n, t in model.state_dict().items()}
    saved = opt.state_dict()
    opt_state = {}
    for i, expert in enumerate(_optimizer_entries(opt, model)):
        entry = saved["state"].get(i, {})  # every parameter has state after a step (its gradient is never None)
        opt_state[i] = {k: (_gather_experts(v, world) if expert and torch.is_tensor(v) and v.dim() else v).cpu()
                        if torch.is_tensor(v) else v for k, v in entry.items()}
    if rank == 0:
        full = build_model(cfg)
        full.load_state_dict(state)
        full_opt = make_optimizer(full, tcfg)
        full_opt.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
        save_checkpoint(path, full, full_opt, step=step, train_config=tcfg, data=data.describe(), extra=extra)
    dist.barrier()  # nobody goes on (or reads the file) before it is written


def _resume_expert_parallel(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer, cfg, rank: int,
                            world: int) -> int:
    """Load this rank's share of the checkpoint at ``path``, if there is one; return its step (0 if none).

    Rank 0 reads the file and sends it to the others, so only rank 0's machine needs it.
    """
    from minimoe.train import CheckpointError, config_from_checkpoint, read_checkpoint

    box: list[Any] = [None]
    if rank == 0 and os.path.exists(path):
        try:
            obj = read_checkpoint(path)
            if config_from_checkpoint(obj) != cfg:
                raise CheckpointError(f"{path} was made for model {obj['model_config'].get('name')!r} with another "
                                      f"config than this run's {cfg.name!r}")
            box[0] = obj
        except CheckpointError as e:
            box[0] = {"error": str(e)}
    dist.broadcast_object_list(box, src=0)
    obj = box[0]
    if obj is None:
        return 0
    if "error" in obj:
        raise CheckpointError(obj["error"])
    per = experts_per_rank(cfg.n_routed_experts, world)
    mine = slice(rank * per, (rank + 1) * per)
    model.load_state_dict({n: t[mine] if _is_expert(n) else t for n, t in obj["model"].items()})
    if obj["optimizer"] is not None:
        saved = obj["optimizer"]
        experts = _optimizer_entries(opt, model)
        state = {int(i): {k: v[mine] if experts[int(i)] and torch.is_tensor(v) and v.dim() else v
                          for k, v in entry.items()} for i, entry in saved["state"].items()}
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return int(obj["step"])


class _MetricsFile:
    """``metrics.jsonl`` of a run: the records of steps before ``start`` kept, one line per new step."""

    def __init__(self, out: str, start: int):
        self.path = os.path.join(out, "metrics.jsonl")
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] < start]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train_worker(rank: int, world: int, preset_name: Any, steps: int, batch_size: int, seed: int = 0,
                 lr: float = 3e-3, n_train: int = 2000, out: str | None = None, dispatch: str = "auto",
                 warmup: int = 10, checkpoint_every: int | None = None, stop_after: int | None = None) -> dict:
    """Train an MoE preset (a name or a ``ModelConfig``) with its experts sharded over ``world``
    ranks; each rank takes every world-th (packed) row of the global batch, and its local experts
    compute through ``dispatch``. Returns ``{"start": the step it began at, "losses": the global
    loss of every step it ran}``.

    Exact, as one process: the cross-entropy is normalized by the scored tokens of the whole batch,
    and each MoE layer's balance losses by the whole batch's counts (``shard_experts``), so each
    rank's loss is its part of the one-process loss. Summing the replicated parameters' gradients
    over ranks (all-reduce) then gives the one-process gradient, and each expert's gradient is
    already complete: every token that used it sent its gradient back. What differs is only the
    order of float sums. (A capacity factor would cap each rank's experts by what that rank
    receives, as real systems do, which is not the one-process rule: the presets used here have none.)

    With ``out``: resumes from ``out/checkpoint.pt`` when there is one (the same step, weights,
    optimizer state and balancing bias, so the losses continue bit for bit), writes one ordinary
    checkpoint every ``checkpoint_every`` steps and at the end, and rank 0 keeps ``metrics.jsonl``.
    ``stop_after`` ends the run at that step without a final checkpoint, as a crash would.
    """
    from minimoe.config import ModelConfig, preset
    from minimoe.model import build_model
    from minimoe.moe import MoELayer, set_dispatch_backend
    from minimoe.train import TrainConfig, make_optimizer, mixture_batches

    cfg = preset_name if isinstance(preset_name, ModelConfig) else preset(preset_name)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    model = build_model(cfg, seed=seed)
    if not shard_experts(model, rank, world):
        raise ValueError(f"preset: {cfg.name!r} has no MoE layers to shard")
    set_dispatch_backend(model, dispatch)
    model.to(device)
    tcfg = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup=min(warmup, steps),
                       checkpoint_every=checkpoint_every or steps)
    data = mixture_batches(n_train=n_train, n_val=0, batch_size=batch_size, seed=seed)
    opt = make_optimizer(model, tcfg)
    path = os.path.join(out, "checkpoint.pt") if out is not None else None
    start = _resume_expert_parallel(path, model, opt, cfg, rank, world) if path else 0
    metrics = _MetricsFile(out, start) if out is not None and rank == 0 else None
    losses = []
    for step in range(start, steps):
        if stop_after is not None and step >= stop_after:
            break
        batch = data.batch(step).to(device)
        rows = slice(rank, None, world)
        inputs, targets, mask = batch.inputs[rows], batch.targets[rows], batch.loss_mask[rows]
        total = mask.sum().float()
        dist.all_reduce(total)
        out_ = model(inputs, token_mask=batch.token_mask[rows], segments=batch.segments[rows])
        per_token = torch.nn.functional.cross_entropy(out_.logits.float().flatten(0, 1), targets.flatten(),
                                                      reduction="none")
        ce = (per_token * mask.flatten()).sum() / total  # this rank's part of the batch's mean
        loss = ce + out_.aux_loss  # the aux loss is this rank's part too (shard_experts)
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
        parts = torch.stack([ce.detach(), out_.aux_loss.detach().float()])
        dist.all_reduce(parts)
        losses.append(float(parts.sum()))
        if metrics is not None:
            metrics.log({"step": step, "loss": losses[-1], "ce": float(parts[0]), "aux_loss": float(parts[1]),
                         "lr": tcfg.lr_at(step), "grad_norm": float(norm), "tokens": int(total.item())})
        done = step + 1
        if path and (done % tcfg.checkpoint_every == 0 or done == steps):
            _save_expert_parallel(path, model, opt, cfg, tcfg, data, done, rank, world,
                                  {"dispatch": dispatch, "expert_parallel": world})
    return {"start": start, "losses": losses}


def main(argv: list[str] | None = None) -> None:
    """Expert-parallel training under ``torchrun`` (one process per GPU, across machines too).

    On each of two machines, the same command (HOST: the first machine's address, reachable from
    the other; ``--rdzv-id``: any name shared by the machines of one run)::

        torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
            --rdzv-id ep-run -m minimoe.parallel --preset tiny-moe --steps 1000 --out runs/ep

    The c10d rendezvous hands out the node ranks (torchrun's default, static rendezvous, would need
    ``--node-rank`` on each machine, and without it both machines claim node 0). Rank 0 writes the
    checkpoint and reads it back to resume, so ``--out`` needs to exist only on the first machine.
    Running the same command again resumes from ``--out``. On one machine, ``minimoe train
    --expert-parallel N`` starts the processes itself.
    """
    import argparse

    p = argparse.ArgumentParser(prog="torchrun ... -m minimoe.parallel")
    p.add_argument("--preset", default="tiny-moe")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16, help="packed rows of 256 positions per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder: checkpoint.pt and metrics.jsonl; resumed if it has them")
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
        rank = dist.get_rank()
        if args.out and rank == 0:
            os.makedirs(args.out, exist_ok=True)
        result = train_worker(rank, dist.get_world_size(), args.preset, args.steps, args.batch_size, args.seed,
                              args.lr, args.samples, args.out, args.dispatch, args.warmup, args.checkpoint_every)
        if rank == 0:
            if result["start"]:
                print(f"resumed {args.out} from step {result['start']}")
            if result["losses"]:
                print(f"step {result['start'] + len(result['losses'])}: loss {result['losses'][-1]:.4f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
