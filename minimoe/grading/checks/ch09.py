"""Chapter 09's exercises: the send counts of an all-to-all; the local dispatch after receipt; the
differentiable all-to-all, run on real gloo processes.

How the all-to-all is checked: a collective cannot be called in one process, and a function
defined in a notebook cannot be imported by freshly spawned processes. So the student's function
runs on ranks forked from wherever it lives (``Student.call_on_ranks``: the notebook itself under
``check()``, the sandboxed kernel under ``minimoe grade``), each rank with inputs the check drew.
Only the ranks' outputs and input gradients come back, as plain tensors. The verdict is reached
here, against ``minimoe.parallel.exchange_reference``: the exchange computed in one process, which
tests/test_parallel.py holds equal to the package's own all-to-all on gloo ranks. Moving rows
changes no bit, so the comparison is exact in effect (fp32 tolerances, which a wrong row misses
by far). A rank that fails or hangs ends the run within ``RANK_TIMEOUT_S`` and costs that check.
"""

from __future__ import annotations

import torch

from minimoe.dispatch import expert_ffn
from minimoe.grading.registry import Student, exercise, expect_close, expect_equal, expect_tuple
from minimoe.parallel import exchange_plan, exchange_reference


def _int(rng: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


counts = exercise("09.send_counts", "the send counts of an all-to-all", functions=("send_counts",),
    protects=("minimoe.parallel.exchange_plan",))


def _routing(rng: torch.Generator, world: int, per_rank: int, k: int, n: int) -> torch.Tensor:
    e = world * per_rank
    return torch.stack([torch.randperm(e, generator=rng)[:k] for _ in range(n)]) if n else torch.zeros(0, k, dtype=torch.long)


@counts.check("one row per token and destination rank", points=2,
              hint="expert e lives on rank e // experts_per_rank; a token whose experts share a rank is sent there once")
def _counts_basic(student: Student, rng: torch.Generator) -> None:
    for _ in range(4):
        world, per_rank = _int(rng, 1, 6), _int(rng, 1, 4)
        k = _int(rng, 1, world * per_rank)
        topk = _routing(rng, world, per_rank, k, _int(rng, 1, 30))
        want = exchange_plan(topk, world * per_rank, world)[2].tolist()
        got = student.call("send_counts", topk, world * per_rank, world)
        got = got.tolist() if isinstance(got, torch.Tensor) else got
        expect_equal(list(got), want, f"send_counts(topk of shape {tuple(topk.shape)}, {world * per_rank} experts, {world} ranks)")


@counts.check("ranks that receive nothing, and no tokens at all", points=1,
              hint="return a count for every rank, zeros included, and an all-zero list when there are no tokens")
def _counts_edges(student: Student, rng: torch.Generator) -> None:
    topk = torch.zeros(5, 1, dtype=torch.long)  # everything to expert 0, on rank 0
    expect_equal(list(_as_list(student.call("send_counts", topk, 8, 4))), [5, 0, 0, 0], "all tokens to rank 0")
    empty = torch.zeros(0, 2, dtype=torch.long)
    expect_equal(list(_as_list(student.call("send_counts", empty, 8, 4))), [0, 0, 0, 0], "no tokens")


def _as_list(x):
    return x.tolist() if isinstance(x, torch.Tensor) else x


local = exercise("09.local_dispatch", "the local dispatch after receipt", functions=("local_dispatch",),
    protects=("minimoe.dispatch.backends.expert_ffn", "minimoe.dispatch.reference.expert_ffn_loop", "minimoe.dispatch.sort.expert_ffn_torch"))


def _received(rng: torch.Generator, pad: bool):
    e_local, d, h, k = _int(rng, 1, 4), _int(rng, 2, 12), _int(rng, 2, 12), _int(rng, 1, 3)
    r = _int(rng, 0 if pad else 1, 10)
    x = torch.randn(r, d, generator=rng)
    ids = torch.randint(0, e_local, (r, k), generator=rng)
    if pad and r:
        ids[torch.rand(r, k, generator=rng) < 0.4] = -1
    w = torch.rand(r, k, generator=rng)
    ws = [torch.randn(e_local, d, h, generator=rng) / d ** 0.5, torch.randn(e_local, d, h, generator=rng) / d ** 0.5,
          torch.randn(e_local, h, d, generator=rng) / h ** 0.5]
    return x, ids, w, ws


def _reference(x, ids, w, ws):
    valid = ids >= 0
    return expert_ffn(x, torch.where(valid, ids, torch.zeros_like(ids)), w * valid, *ws)


@local.check("each row through its local experts, weighted and summed", points=2,
             hint="for each received row, sum weight_j * expert_{id_j}(row) over its slots; each expert is a SwiGLU: (silu(x @ w_gate) * (x @ w_up)) @ w_down")
def _local_basic(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        x, ids, w, ws = _received(rng, pad=False)
        expect_close(student.call("local_dispatch", x, ids, w, *ws), _reference(x, ids, w, ws), "local_dispatch")


@local.check("slots marked -1 are skipped, and nothing received works", points=1,
             hint="a slot with id -1 is an expert on another rank: it adds nothing here; zero rows in, zero rows out")
def _local_padding(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        x, ids, w, ws = _received(rng, pad=True)
        expect_close(student.call("local_dispatch", x, ids, w, *ws), _reference(x, ids, w, ws),
                     f"local_dispatch with {int((ids < 0).sum())} padded slots and {x.shape[0]} rows")


exchange = exercise("09.all_to_all", "the differentiable all-to-all", functions=("all_to_all",),
                    protects=("minimoe.parallel.all_to_all",))


def _exchange_case(rng: torch.Generator, world: int, row_shape: tuple[int, ...], empty_rank: int | None = None):
    """Random splits (zeros included) and rows for ``world`` ranks: the arguments of each rank for
    ``all_to_all(x, recv_splits, send_splits)`` plus a gradient, and the expected outputs and gradients."""
    send = [[_int(rng, 0, 4) for _ in range(world)] for _ in range(world)]
    send[0][world - 1] = 0  # one pair of ranks exchanges nothing
    if empty_rank is not None:
        send[empty_rank] = [0] * world  # a rank with nothing to send
    recv = [[send[s][r] for s in range(world)] for r in range(world)]
    xs = [torch.randn(sum(send[r]), *row_shape, generator=rng) for r in range(world)]
    ys = exchange_reference(xs, send)
    grads = [torch.randn(y.shape, generator=rng) for y in ys]
    dxs = exchange_reference(grads, recv)
    args = [(xs[r], recv[r], send[r], grads[r]) for r in range(world)]
    return args, ys, dxs


def _ranks(student: Student, world: int, args: list, driver: str) -> list:
    out = student.call_on_ranks("all_to_all", world, args, driver)
    return list(expect_tuple(out, world, f"all_to_all should give one result per rank ({world})"))


def _expect_forward_backward(student: Student, args: list, ys: list, dxs: list) -> None:
    """Run the student's all_to_all forward and backward on len(args) ranks; compare each rank's result and dL/dx."""
    outs = _ranks(student, len(args), args, "forward_backward")
    for r, (got, y, dx) in enumerate(zip(outs, ys, dxs)):
        if not isinstance(got, dict) or "y" not in got or "dx" not in got:
            raise AssertionError(f"rank {r} gave no result")
        expect_close(got["y"], y, f"rank {r}'s result")
        expect_close(got["dx"], dx, f"rank {r}'s gradient with respect to x")


@exchange.check("forward: each rank receives the rows sent to it, in rank order", points=2,
                hint="all_to_all_single(out, x, recv_splits, send_splits): out has sum(recv_splits) rows "
                     "and the rows' other dimensions; recv comes before send in its arguments")
def _a2a_forward(student: Student, rng: torch.Generator) -> None:
    args, ys, _ = _exchange_case(rng, 2, (_int(rng, 1, 6),))
    outs = _ranks(student, 2, [a[:3] for a in args], "call")
    for r, (got, want) in enumerate(zip(outs, ys)):
        expect_close(got, want, f"rank {r}'s result")


@exchange.check("backward: each row's gradient goes back to the rank it came from", points=2,
                hint="wrap the exchange in a torch.autograd.Function; its backward is the same exchange "
                     "with the two split lists swapped, and returns None for the splits")
def _a2a_backward(student: Student, rng: torch.Generator) -> None:
    _expect_forward_backward(student, *_exchange_case(rng, 2, (_int(rng, 1, 6),)))


@exchange.check("three ranks, a rank with nothing to send, rows of more than one dimension", points=1,
                hint="size the output from recv_splits and x.shape[1:], not from x.shape[0]; a rank may "
                     "send or receive no rows at all and must still take part in the exchange")
def _a2a_edges(student: Student, rng: torch.Generator) -> None:
    _expect_forward_backward(student, *_exchange_case(rng, 3, (_int(rng, 1, 3), _int(rng, 1, 3)),
                                                      empty_rank=_int(rng, 0, 2)))
