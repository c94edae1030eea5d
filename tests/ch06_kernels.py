"""Right and wrong Triton kernels for chapter 06's kernel exercises, graded by the registry's checks.

Imported only by a fresh Python with ``TRITON_INTERPRET=1`` (``test_checks_ch06.py`` starts it): the
kernels below must be defined after Triton was imported in interpreter mode.
"""

import json

import triton
import triton.language as tl

from minimoe.grading import get_exercise, run_checks
from minimoe.grading.student import LocalStudent


@triton.jit
def tile_right(a_ptr, w_ptr, c_ptr, te_ptr, ts_ptr, tend_ptr, K, N, sam, sak, swe, swk, swn, scm, scn,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    e = tl.load(te_ptr + t).to(tl.int64)
    rows = tl.load(ts_ptr + t) + tl.arange(0, BLOCK_M)
    rmask = rows < tl.load(tend_ptr + t)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * sam + ks[None, :] * sak, mask=rmask[:, None] & (ks < K)[None, :], other=0.0)
        w = tl.load(w_ptr + e * swe + ks[:, None] * swk + cols[None, :] * swn, mask=(ks < K)[:, None] & cmask[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc)
    tl.store(c_ptr + rows[:, None] * scm + cols[None, :] * scn, acc.to(c_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def tile_no_row_mask(a_ptr, w_ptr, c_ptr, te_ptr, ts_ptr, tend_ptr, K, N, sam, sak, swe, swk, swn, scm, scn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # stores every row of the tile, even past its end: overwrites the next expert's rows and row 0 (spare tiles)
    t = tl.program_id(0)
    e = tl.load(te_ptr + t).to(tl.int64)
    rows = tl.load(ts_ptr + t) + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * sam + ks[None, :] * sak, mask=(ks < K)[None, :] & (rows < 10_000)[:, None],
                    other=0.0)
        w = tl.load(w_ptr + e * swe + ks[:, None] * swk + cols[None, :] * swn, mask=(ks < K)[:, None] & cmask[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc)
    tl.store(c_ptr + rows[:, None] * scm + cols[None, :] * scn, acc.to(c_ptr.dtype.element_ty),
             mask=(rows < 10_000)[:, None] & cmask[None, :])


@triton.jit
def tile_expert_zero(a_ptr, w_ptr, c_ptr, te_ptr, ts_ptr, tend_ptr, K, N, sam, sak, swe, swk, swn, scm, scn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # ignores the schedule's expert: every tile multiplies by W[0]
    t = tl.program_id(0)
    rows = tl.load(ts_ptr + t) + tl.arange(0, BLOCK_M)
    rmask = rows < tl.load(tend_ptr + t)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * sam + ks[None, :] * sak, mask=rmask[:, None] & (ks < K)[None, :], other=0.0)
        w = tl.load(w_ptr + ks[:, None] * swk + cols[None, :] * swn, mask=(ks < K)[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    tl.store(c_ptr + rows[:, None] * scm + cols[None, :] * scn, acc.to(c_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def wgrad_right(a_ptr, g_ptr, dw_ptr, s_ptr, e_ptr, K, N, sam, sak, sgm, sgn, swe, swk, swn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    e = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    r1 = tl.load(e_ptr + e)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(tl.load(s_ptr + e), r1, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        a = tl.load(a_ptr + rows[:, None] * sam + ks[None, :] * sak, mask=(rows < r1)[:, None] & (ks < K)[None, :],
                    other=0.0)
        g = tl.load(g_ptr + rows[:, None] * sgm + cols[None, :] * sgn, mask=(rows < r1)[:, None] & (cols < N)[None, :],
                    other=0.0)
        acc = tl.dot(tl.trans(a), g, acc)
    tl.store(dw_ptr + e.to(tl.int64) * swe + ks[:, None] * swk + cols[None, :] * swn, acc.to(dw_ptr.dtype.element_ty),
             mask=(ks < K)[:, None] & (cols < N)[None, :])


@triton.jit
def wgrad_skips_idle(a_ptr, g_ptr, dw_ptr, s_ptr, e_ptr, K, N, sam, sak, sgm, sgn, swe, swk, swn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # an expert with no rows stores nothing: its gradient is left as whatever was in the buffer
    e = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    r0 = tl.load(s_ptr + e)
    r1 = tl.load(e_ptr + e)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(r0, r1, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        a = tl.load(a_ptr + rows[:, None] * sam + ks[None, :] * sak, mask=(rows < r1)[:, None] & (ks < K)[None, :],
                    other=0.0)
        g = tl.load(g_ptr + rows[:, None] * sgm + cols[None, :] * sgn, mask=(rows < r1)[:, None] & (cols < N)[None, :],
                    other=0.0)
        acc = tl.dot(tl.trans(a), g, acc)
    if r1 > r0:
        tl.store(dw_ptr + e.to(tl.int64) * swe + ks[:, None] * swk + cols[None, :] * swn,
                 acc.to(dw_ptr.dtype.element_ty), mask=(ks < K)[:, None] & (cols < N)[None, :])


def python_gemm(*args, **kwargs):  # a wrapper, not a kernel: the launcher must refuse it
    raise AssertionError("never called")


def grade(exercise: str, name: str, fn) -> dict:
    outcomes = run_checks(get_exercise(exercise), LocalStudent({name: fn}))
    return {o.name: [o.passed, o.message] for o in outcomes}


if __name__ == "__main__":
    results = {
        "tile right": grade("06.tile_kernel", "tile_matmul_kernel", tile_right),
        "tile no row mask": grade("06.tile_kernel", "tile_matmul_kernel", tile_no_row_mask),
        "tile expert zero": grade("06.tile_kernel", "tile_matmul_kernel", tile_expert_zero),
        "tile python": grade("06.tile_kernel", "tile_matmul_kernel", python_gemm),
        "wgrad right": grade("06.weight_grad_kernel", "expert_weight_grad_kernel", wgrad_right),
        "wgrad skips idle": grade("06.weight_grad_kernel", "expert_weight_grad_kernel", wgrad_skips_idle),
    }
    print("RESULTS " + json.dumps(results))
