"""Chapter 06's exercises: the permutation and offsets, the combine, two Triton kernels (a grouped-matmul
tile loop and one expert's weight gradient), each launched by the check itself through ``Student.launch``."""

from __future__ import annotations

import torch

from minimoe.dispatch import combine, route, triton_importable
from minimoe.grading.registry import Student, exercise, expect_close, expect_tuple

# --- 06.route: the permutation and the offsets -------------------------------------------------------

perm = exercise("06.route", "the permutation and the offsets", functions=("permutation_and_offsets",),
                protects=("minimoe.dispatch.sort.route", "minimoe.dispatch.sort.sort_keys"))


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

comb = exercise("06.combine", "the combine", functions=("combine_rows",),
                protects=("minimoe.dispatch.sort.combine",))


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


# --- Triton kernels: the check launches the student's kernel on its own grid and inputs ---------------

def _need_triton() -> None:
    if not triton_importable():
        raise AssertionError("this exercise needs Triton, which is not installed here (it runs on Linux "
                             "only): do it on Linux or on Colab")


# (rtol, atol) per dtype: inputs are small integers-ish randoms summed over K <= 80 in fp32; on a GPU
# tl.dot rounds fp32 inputs to tf32 (10-bit mantissa) unless told otherwise, hence 2e-3 for float32.
KERNEL_TOLERANCES = {torch.float32: (2e-3, 2e-3), torch.float16: (1e-2, 1e-2)}


def _expect_written(got, want: torch.Tensor, written: torch.Tensor, what: str) -> None:
    """``got`` equals ``want`` where ``written`` (within tolerance) and is untouched (NaN) elsewhere,
    the buffer's padding included. ``written`` is a bool mask of ``want``'s shape."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise AssertionError(f"{what}: the output buffer came back as {shape}, expected {tuple(want.shape)}")
    got, ref = got.float(), want.float()

    def place(mask: torch.Tensor) -> str:
        i = mask.nonzero()[0].tolist()
        return "element " + str(tuple(i))

    missing = written & torch.isnan(got)
    if missing.any():
        raise AssertionError(f"{what}: {place(missing)} (and maybe more) was never written")
    rtol, atol = KERNEL_TOLERANCES[want.dtype if want.dtype in KERNEL_TOLERANCES else torch.float32]
    if written.any() and not torch.allclose(got[written], ref[written], rtol=rtol, atol=atol):
        err = (got[written] - ref[written]).abs().max().item()
        raise AssertionError(f"{what}: values differ (max |difference| {err:.3g}, rtol {rtol}, atol {atol})")
    stray = ~written & ~torch.isnan(got)
    if stray.any():
        raise AssertionError(f"{what}: {place(stray)} belongs to no tile (or lies past the edge) but was written; "
                             "mask rows past the tile's end, columns past N, and the spare tiles (start = end)")


def _schedule_case(rng: torch.Generator, counts: list[int], block_m: int, spare: int, shuffle: bool):
    """Sorted rows for experts with these counts, cut into tiles of at most ``block_m`` rows of one
    expert, plus ``spare`` empty tiles (start = end = 0); the tile table optionally shuffled."""
    expert, start, end = [], [], []
    row = 0
    for e, c in enumerate(counts):
        for s in range(row, row + c, block_m):
            expert.append(e), start.append(s), end.append(min(s + block_m, row + c))
        row += c
    expert += [0] * spare
    start += [0] * spare
    end += [0] * spare
    table = torch.tensor([expert, start, end], dtype=torch.int32)  # (3, T)
    if shuffle:
        table = table[:, torch.randperm(table.shape[1], generator=rng)]
    return table[0].contiguous(), table[1].contiguous(), table[2].contiguous(), row


tiles = exercise("06.tile_kernel", "a grouped-matmul tile loop in Triton", functions=("tile_matmul_kernel",))


def _tile_case(student: Student, rng: torch.Generator, counts: list[int], k: int, n: int, dtype: torch.dtype,
               block: tuple[int, int, int], spare: int = 2, shuffle: bool = True, extra_rows: int = 0,
               transposed_w: bool = False, what: str = "") -> None:
    _need_triton()
    bm, bn, bk = block
    t_exp, t_start, t_end, rows = _schedule_case(rng, counts, bm, spare, shuffle)
    e = len(counts)
    # Every buffer has a margin of NaN/random padding past its end (BLOCK_M rows, one more expert): a kernel
    # that forgets a mask reads or writes there, where the check sees it, instead of outside the buffer
    # (under the interpreter that would crash the kernel's process).
    total = rows + extra_rows + bm
    a = torch.randn(total, k, generator=rng).to(dtype)  # rows past the last expert's: no tile covers them
    if transposed_w:
        w = torch.randn(e + 1, n, k, generator=rng).to(dtype).transpose(1, 2)  # (E+1, K, N), transposed strides
    else:
        w = torch.randn(e + 1, k, n, generator=rng).to(dtype)
    c = torch.full((total, n + bn), float("nan"), dtype=dtype)  # C: (rows, N) and a margin of BLOCK_N columns
    grid = (t_exp.shape[0], -(-n // bn))
    out = student.launch("tile_matmul_kernel", grid, a, w, c, t_exp, t_start, t_end, k, n,
                         a.stride(0), a.stride(1), *w.stride(), c.stride(0), c.stride(1),
                         BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    want = torch.full((total, n + bn), float("nan"))
    written = torch.zeros(total, n + bn, dtype=torch.bool)
    start = 0
    for ex, count in enumerate(counts):  # the reference: each expert's rows times its weights, in fp32
        want[start:start + count, :n] = a[start:start + count].float() @ w[ex].float()
        written[start:start + count, :n] = True
        start += count
    got = out[2] if isinstance(out, (list, tuple)) and len(out) > 2 else out
    _expect_written(got, want.to(dtype), written, what)


@tiles.check("one expert per tile, float32", points=2,
             hint="program (t, j) reads its expert, first and last row from the three tile tables; its rows are "
                  "start + arange(BLOCK_M); step through K by BLOCK_K, accumulating A's tile times W[e]'s in float32")
def _tile_fp32(student: Student, rng: torch.Generator) -> None:
    _tile_case(student, rng, [20, 5, 16], k=32, n=32, dtype=torch.float32, block=(16, 16, 16), spare=0,
               shuffle=False, what="tile_matmul_kernel, 3 experts, K = N = 32, float32")


@tiles.check("short tiles, an idle expert, spare tiles, tiles in any order", points=2,
             hint="mask rows with rows < tile_end[t] when loading and storing: a tile may be shorter than BLOCK_M, "
                  "a spare tile has start = end = 0 and must write nothing; read the tile's expert, never assume order")
def _tile_edges(student: Student, rng: torch.Generator) -> None:
    _tile_case(student, rng, [3, 0, 17, 1, 9], k=32, n=16, dtype=torch.float32, block=(16, 16, 16), spare=3,
               extra_rows=4, what="tile_matmul_kernel with an idle expert, spare tiles and unrouted rows")


@tiles.check("K and N not multiples of the blocks, strided weights, float16", points=2,
             hint="mask the K loop (ks < K) on both loads with other=0.0, the columns (cols < N) on the weight load "
                  "and the store; use every stride you are given (the weights may be a transposed view)")
def _tile_odd(student: Student, rng: torch.Generator) -> None:
    _tile_case(student, rng, [7, 12, 4], k=40, n=24, dtype=torch.float32, block=(16, 16, 16), transposed_w=True,
               what="tile_matmul_kernel with K = 40, N = 24, transposed weights")
    _tile_case(student, rng, [9, 3], k=24, n=40, dtype=torch.float16, block=(16, 32, 16),
               what="tile_matmul_kernel in float16, K = 24, N = 40")


wgrad = exercise("06.weight_grad_kernel", "one expert's weight gradient in Triton", functions=("expert_weight_grad_kernel",))


def _wgrad_case(student: Student, rng: torch.Generator, counts: list[int], k: int, n: int, dtype: torch.dtype,
                block: tuple[int, int, int], what: str) -> None:
    _need_triton()
    bm, bn, bk = block
    e, rows = len(counts), sum(counts)
    ends = torch.tensor(counts).cumsum(0)
    starts = (ends - torch.tensor(counts)).to(torch.int32).contiguous()
    ends = ends.to(torch.int32).contiguous()
    # padding past each buffer's end (BLOCK_M rows; one more expert's block of dW), as in the tile check
    a = torch.randn(rows + bm, k, generator=rng).to(dtype)  # (R, K) sorted rows: what each expert read
    g = torch.randn(rows + bm, n, generator=rng).to(dtype)  # (R, N) the gradient of what it wrote
    dw = torch.full((e + 1, k + bk, n + bn), float("nan"), dtype=dtype)  # margins past K and N too
    view = dw[:, :k, :n]
    grid = (e, -(-k // bk), -(-n // bn))
    out = student.launch("expert_weight_grad_kernel", grid, a, g, dw, starts, ends, k, n,
                         a.stride(0), a.stride(1), g.stride(0), g.stride(1), *view.stride(),
                         BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    want = torch.full(dw.shape, float("nan"))
    written = torch.zeros(dw.shape, dtype=torch.bool)
    for ex in range(e):  # the reference: dW[e] = A_e^T @ G_e over expert e's rows, zeros for an idle expert
        s, t = int(starts[ex]), int(ends[ex])
        want[ex, :k, :n] = a[s:t].float().t() @ g[s:t].float()
        written[ex, :k, :n] = True
    got = out[2] if isinstance(out, (list, tuple)) and len(out) > 2 else out
    _expect_written(got, want.to(dtype), written, what)


@wgrad.check("each expert's rows, float32", points=2,
             hint="program (e, i, j) owns one block of dW[e]: step through expert e's rows (start[e] to end[e]) by "
                  "BLOCK_M and accumulate the transposed A tile times the G tile")
def _wgrad_fp32(student: Student, rng: torch.Generator) -> None:
    _wgrad_case(student, rng, [16, 32, 48], k=32, n=32, dtype=torch.float32, block=(16, 16, 16),
                what="expert_weight_grad_kernel, 3 experts, float32")


@wgrad.check("an idle expert, uneven rows, odd widths, float16", points=2,
             hint="an expert with no rows still stores its block (zeros); mask rows (rows < end) and the K and N "
                  "edges (ks < K, cols < N) on loads and the store")
def _wgrad_edges(student: Student, rng: torch.Generator) -> None:
    _wgrad_case(student, rng, [5, 0, 21, 1], k=24, n=40, dtype=torch.float32, block=(16, 16, 16),
                what="expert_weight_grad_kernel with an idle expert and K = 24, N = 40")
    _wgrad_case(student, rng, [9, 17], k=16, n=24, dtype=torch.float16, block=(16, 16, 16),
                what="expert_weight_grad_kernel in float16")
