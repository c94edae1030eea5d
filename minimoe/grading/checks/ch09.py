"""Chapter 09's exercises: the send counts of an all-to-all; the local dispatch after receipt."""

from __future__ import annotations

import torch

from minimoe.dispatch import expert_ffn
from minimoe.grading.registry import Student, exercise, expect_close, expect_equal
from minimoe.parallel import exchange_plan


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
    protects=("minimoe.dispatch.backends.expert_ffn", "minimoe.dispatch.reference.expert_ffn_loop", "minimoe.dispatch.reference.expert_ffn", "minimoe.dispatch.sort.expert_ffn_torch"))


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
