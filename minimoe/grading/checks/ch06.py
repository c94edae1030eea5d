"""Chapter 06's exercises: the permutation and offsets, the combine, a Triton gather kernel."""

from __future__ import annotations

import torch

from minimoe.dispatch import combine, route, triton_importable
from minimoe.grading.registry import Student, exercise, expect_close, expect_tuple

# --- 06.route: the permutation and the offsets -------------------------------------------------------

perm = exercise("06.route", "the permutation and the offsets", functions=("permutation_and_offsets",),
    protects=("minimoe.dispatch.sort.route",))


def _routing(rng: torch.Generator, n: int, e: int, k: int, routing: str = "random") -> torch.Tensor:
    scores = torch.randn(n, e, generator=rng)
    if routing == "idle":
        scores[:, 0] = -1e9
    if routing == "one":
        scores[:, e - 1] = 1e9
    return scores.topk(k, dim=1).indices  # (n, k), distinct per row


def _expect_ints(got, want: torch.Tensor, what: str) -> None:
    if not isinstance(got, torch.Tensor) or got.dtype.is_floating_point:
        raise AssertionError(f"{what}: expected an integer tensor, got "
                             f"{got.dtype if isinstance(got, torch.Tensor) else type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
    if not torch.equal(got.long(), want):
        i = int((got.long() != want).nonzero()[0, 0])
        raise AssertionError(f"{what}: wrong at position {i}: expected {int(want[i])}, got {int(got[i])}")


def _call_perm(student: Student, idx: torch.Tensor, e: int):
    return expect_tuple(student.call("permutation_and_offsets", idx, e), 2,
                        "permutation_and_offsets should return (order, offsets)")


@perm.check("random routing", points=2,
            hint="flatten topk_idx to N·k ids, sort them with a STABLE argsort; offsets are the cumulative "
                 "token counts per expert (look at torch.bincount's minlength)")
def _perm_random(student: Student, rng: torch.Generator) -> None:
    n, e = int(torch.randint(5, 40, (1,), generator=rng)), int(torch.randint(3, 12, (1,), generator=rng))
    k = int(torch.randint(1, min(e, 4) + 1, (1,), generator=rng))
    idx = _routing(rng, n, e, k)
    order, offsets = _call_perm(student, idx, e)
    want_order, _, want_offsets = route(idx, e)
    _expect_ints(order, want_order, f"order for {n} tokens, {e} experts, k={k}")
    _expect_ints(offsets, want_offsets, "offsets")


@perm.check("an idle expert, a crowded one, a single token", points=2,
            hint="an expert nobody chose still has an offset (equal to the one before it); "
                 "offsets has one entry per expert, the last one is N·k")
def _perm_edges(student: Student, rng: torch.Generator) -> None:
    for n, e, k, routing in [(12, 6, 2, "idle"), (9, 5, 1, "one"), (1, 4, 4, "random")]:
        idx = _routing(rng, n, e, k, routing)
        order, offsets = _call_perm(student, idx, e)
        want_order, _, want_offsets = route(idx, e)
        _expect_ints(order, want_order, f"order ({routing} routing, {n} tokens, k={k})")
        _expect_ints(offsets, want_offsets, f"offsets ({routing} routing, {n} tokens, k={k})")


# --- 06.combine: weight and add back -------------------------------------------------------------------

comb = exercise("06.combine", "the combine", functions=("combine_rows",), protects=("minimoe.dispatch.sort.combine",))


def _combine_case(rng: torch.Generator, n: int, e: int, k: int, d: int, dtype=torch.float32, routing="random"):
    idx = _routing(rng, n, e, k, routing)
    order, _, _ = route(idx, e)
    y = torch.randn(n * k, d, generator=rng).to(dtype)  # sorted expert outputs
    weights = torch.rand(n, k, generator=rng)
    return y, order, weights, n


@comb.check("weights each row and adds it to its token", points=2,
            hint="sorted row r belongs to token order[r] // k and slot order[r] % k; its weight is "
                 "weights[token, slot]; add (do not overwrite): a token receives k rows")
def _combine_random(student: Student, rng: torch.Generator) -> None:
    n, k = int(torch.randint(4, 30, (1,), generator=rng)), int(torch.randint(2, 4, (1,), generator=rng))
    case = _combine_case(rng, n, 6, k, 10)
    expect_close(student.call("combine_rows", *case), combine(*case), f"combine_rows ({n} tokens, k={k})")


@comb.check("k = 1, all on one expert, fp16 rows summed in fp32", points=1,
            hint="return float32 whatever the rows' dtype: convert before multiplying and adding")
def _combine_edges(student: Student, rng: torch.Generator) -> None:
    case = _combine_case(rng, 7, 5, 1, 6, routing="one")
    expect_close(student.call("combine_rows", *case), combine(*case), "combine_rows with k = 1")
    case = _combine_case(rng, 9, 4, 3, 8, dtype=torch.float16)
    got = student.call("combine_rows", *case)
    if isinstance(got, torch.Tensor) and got.dtype != torch.float32:
        raise AssertionError(f"combine_rows of float16 rows: expected a float32 result, got {got.dtype}")
    expect_close(got, combine(*case), "combine_rows of float16 rows")


# --- 06.gather_kernel: a Triton kernel ----------------------------------------------------------------

gather = exercise("06.gather_kernel", "a Triton kernel for the gather", functions=("gather_rows",),
    protects=("minimoe.dispatch.sort.permute",))


def _need_triton() -> None:
    if not triton_importable():
        raise AssertionError("this exercise needs Triton, which is not installed here (it runs on Linux "
                             "only): do it on Linux or on Colab")


def _gather_case(rng: torch.Generator, rows: int, d: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(rows, d, generator=rng).to(dtype)
    index = torch.randint(0, rows, (int(torch.randint(1, 2 * rows, (1,), generator=rng)),), generator=rng)
    return x, index


def _expect_gather(got, x: torch.Tensor, index: torch.Tensor, what: str) -> None:
    want = x[index]
    if isinstance(got, torch.Tensor) and got.dtype != want.dtype:
        raise AssertionError(f"{what}: expected dtype {want.dtype}, got {got.dtype}")
    if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(want.shape) and not torch.equal(got, want):
        row = int((got != want).any(1).nonzero()[0, 0])
        raise AssertionError(f"{what}: output row {row} should be x[{int(index[row])}]; a gather copies, "
                             "so it must be exact")
    expect_close(got, want, what)


@gather.check("copies the chosen rows (float32)", points=2,
              hint="one program per output row r: load index[r], then copy that row of x to row r of out")
def _gather_fp32(student: Student, rng: torch.Generator) -> None:
    _need_triton()
    x, index = _gather_case(rng, 13, 64, torch.float32)
    _expect_gather(student.call("gather_rows", x, index), x, index, "gather_rows(x of shape (13, 64), index)")


@gather.check("a width that is not a multiple of the block, float16", points=2,
              hint="loop over the row in blocks of BLOCK_D columns and mask the last block (cols < D)")
def _gather_odd(student: Student, rng: torch.Generator) -> None:
    _need_triton()
    for d, dtype in [(97, torch.float32), (33, torch.float16)]:
        x, index = _gather_case(rng, 9, d, dtype)
        _expect_gather(student.call("gather_rows", x, index), x, index, f"gather_rows with width {d}, {dtype}")
