"""The Triton kernels of the expert dispatch. Imported only by ``minimoe.dispatch.triton_path``.

This module imports ``triton`` at its top, so nothing else in the package imports it directly: the
package works where Triton is absent (macOS). On a machine without CUDA, ``triton_path`` sets
``TRITON_INTERPRET=1`` before importing it, and the kernels run on CPU tensors through Triton's
NumPy interpreter; with CUDA they are compiled.

Layout words used below (R = N·k assignments, sorted by expert):

- a *tile* is BLOCK_M consecutive sorted rows of ONE expert: the host's schedule never lets a
  tile cross into the next expert, so each program multiplies by one expert's weights;
- *gather*: a kernel reads row ``idx[r]`` of its input instead of row r (the permutation is
  fused into the loads, no permuted copy of x is ever written);
- *scatter*: a kernel writes its row r to row ``idx[r]`` of the output.

The two GEMM kernels come in two forms: ``grouped_mm_kernel`` and ``grouped_weight_grad_kernel``
are the plain ``@triton.jit`` functions (launch them with explicit blocks), and ``grouped_mm`` and
``grouped_weight_grad`` wrap them in ``triton.autotune`` over the tiles of ``tuning.py``, keyed on
the shapes (and Triton adds the dtypes). The host launches the autotuned forms; under the
interpreter their pruning keeps one tile, so nothing is timed on a CPU.
"""

import triton
import triton.language as tl

from minimoe.dispatch import tuning


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    """acc += a @ b; fp32 inputs in full precision (no TF32) when IEEE."""
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def grouped_mm_kernel(
    a_ptr, a2_ptr, a_idx_ptr,  # A: (rows, K), row r read from a_idx[r] when GATHER_A; a2 like a (MODE 3)
    b_ptr, b2_ptr,  # B: (E, K, N) expert weights, any strides (a transpose is free)
    c_ptr, c2_ptr, g_ptr, u_ptr, c_idx_ptr,  # outputs (R, N); c written to row c_idx[r] when SCATTER_C
    tile_expert_ptr, tile_start_ptr, tile_end_ptr,  # (T,) the schedule: tile t = rows [start, end) of one expert
    K, N,
    stride_am, stride_ak,
    stride_be, stride_bk, stride_bn,
    stride_b2e, stride_b2k, stride_b2n,
    stride_cm, stride_cn,
    MODE: tl.constexpr,  # 0: c = A@B; 1: SwiGLU forward; 2: SwiGLU backward; 3: c = A@B + A2@B2
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, STORE_GU: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # --- which tile: one expert, up to BLOCK_M of its rows, BLOCK_N output columns -----------------
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_t).to(tl.int64)
    row0 = tl.load(tile_start_ptr + pid_t)
    row1 = tl.load(tile_end_ptr + pid_t)
    rows = row0 + tl.arange(0, BLOCK_M)  # (BM,) sorted rows
    rmask = rows < row1
    if GATHER_A:  # the permutation fused into the loads: sorted row r reads A's row a_idx[r]
        src = tl.load(a_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
    else:
        src = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    cmask = cols < N
    k_hi = tl.where(row0 < row1, K, 0)  # the padding tiles at the end of the grid do no work

    # --- the K loop: acc (BM, BN) += A[rows, ks] @ B[e, ks, cols] ----------------------------------
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        a_offs = src[:, None] * stride_am + ks[None, :] * stride_ak
        a = tl.load(a_ptr + a_offs, mask=rmask[:, None] & kmask[None, :], other=0.0)  # (BM, BK)
        bmask = kmask[:, None] & cmask[None, :]
        b = tl.load(b_ptr + e * stride_be + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=bmask, other=0.0)  # (BK, BN)
        acc = _mma(a, b, acc, IEEE)
        if MODE == 1 or MODE == 3:
            b2 = tl.load(b2_ptr + e * stride_b2e + ks[:, None] * stride_b2k + cols[None, :] * stride_b2n,
                         mask=bmask, other=0.0)
            if MODE == 1:  # the up projection shares the gathered x tile with the gate projection
                acc2 = _mma(a, b2, acc2, IEEE)
            else:  # dx = dg @ Wg^T + du @ Wu^T
                a2 = tl.load(a2_ptr + a_offs, mask=rmask[:, None] & kmask[None, :], other=0.0)
                acc2 = _mma(a2, b2, acc2, IEEE)

    # --- the epilogue: what each mode does with the accumulators ----------------------------------
    omask = rmask[:, None] & cmask[None, :]
    sorted_offs = rows[:, None].to(tl.int64) * stride_cm + cols[None, :] * stride_cn
    if SCATTER_C:  # write row r to row c_idx[r] (back to the token's (n, j) slot)
        dst = tl.load(c_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        c_offs = dst[:, None] * stride_cm + cols[None, :] * stride_cn
    else:
        c_offs = sorted_offs
    if MODE == 0:
        tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=omask)
    if MODE == 1:  # act = silu(x Wg) * (x Wu), keeping g and u for the backward
        if STORE_GU:
            tl.store(g_ptr + sorted_offs, acc.to(g_ptr.dtype.element_ty), mask=omask)
            tl.store(u_ptr + sorted_offs, acc2.to(u_ptr.dtype.element_ty), mask=omask)
        gq = acc.to(g_ptr.dtype.element_ty).to(tl.float32)  # round like the stored g, u
        uq = acc2.to(u_ptr.dtype.element_ty).to(tl.float32)
        act = gq * tl.sigmoid(gq) * uq
        tl.store(c_ptr + c_offs, act.to(c_ptr.dtype.element_ty), mask=omask)
    if MODE == 2:  # acc = d(act); chain through act = silu(g) * u
        g = tl.load(g_ptr + sorted_offs, mask=omask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + sorted_offs, mask=omask, other=0.0).to(tl.float32)
        sg = tl.sigmoid(g)
        dg = acc * u * sg * (1.0 + g * (1.0 - sg))  # silu'(g) = s + g s (1 - s)
        du = acc * g * sg
        tl.store(c_ptr + c_offs, dg.to(c_ptr.dtype.element_ty), mask=omask)
        tl.store(c2_ptr + c_offs, du.to(c2_ptr.dtype.element_ty), mask=omask)
    if MODE == 3:
        tl.store(c_ptr + c_offs, (acc + acc2).to(c_ptr.dtype.element_ty), mask=omask)


@triton.jit
def grouped_weight_grad_kernel(
    a_ptr, a2_ptr, a_idx_ptr, b_ptr, b2_ptr, b_idx_ptr,  # A: (rows, K) optionally gathered; B, B2: (rows, N)
    c_ptr, c2_ptr,  # (E, K, N): c[e] = A_e^T B_e, c2[e] = A_e^T B2_e
    expert_start_ptr, expert_end_ptr,  # (E,) each expert's sorted rows
    K, N,
    stride_am, stride_ak, stride_bm, stride_bn, stride_ce, stride_ck, stride_cn,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, DUAL: tl.constexpr, A_SWIGLU: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # One program: expert e, a (BLOCK_K, BLOCK_N) block of its weight gradient, summed over its rows.
    # A_SWIGLU: A is not stored; it is silu(g) * u, rebuilt here from g (a_ptr) and u (a2_ptr), rounded
    # to their dtype exactly as the forward rounded it (the forward does not keep act for backward).
    e = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    kmask = ks < K
    cmask = cols < N
    r0 = tl.load(expert_start_ptr + e)
    r1 = tl.load(expert_end_ptr + e)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(r0, r1, BLOCK_M):  # an expert with no rows runs no iterations: its gradient is 0
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < r1
        if GATHER_A:
            asrc = tl.load(a_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        else:
            asrc = rows.to(tl.int64)
        if GATHER_B:
            bsrc = tl.load(b_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        else:
            bsrc = rows.to(tl.int64)
        a_offs = asrc[:, None] * stride_am + ks[None, :] * stride_ak
        amask = rmask[:, None] & kmask[None, :]
        a = tl.load(a_ptr + a_offs, mask=amask, other=0.0)  # (BM, BK)
        if A_SWIGLU:  # act = silu(g) * u, in fp32, rounded to g's dtype like the forward's store
            g = a.to(tl.float32)
            u = tl.load(a2_ptr + a_offs, mask=amask, other=0.0).to(tl.float32)
            a = (g * tl.sigmoid(g) * u).to(a_ptr.dtype.element_ty)
        b_offs = bsrc[:, None] * stride_bm + cols[None, :] * stride_bn
        bmask = rmask[:, None] & cmask[None, :]
        b = tl.load(b_ptr + b_offs, mask=bmask, other=0.0)  # (BM, BN)
        at = tl.trans(a)  # (BK, BM)
        acc = _mma(at, b, acc, IEEE)
        if DUAL:
            b2 = tl.load(b2_ptr + b_offs, mask=bmask, other=0.0)
            acc2 = _mma(at, b2, acc2, IEEE)
    c_offs = e.to(tl.int64) * stride_ce + ks[:, None] * stride_ck + cols[None, :] * stride_cn
    omask = kmask[:, None] & cmask[None, :]
    tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=omask)
    if DUAL:
        tl.store(c2_ptr + c_offs, acc2.to(c2_ptr.dtype.element_ty), mask=omask)


# --- the autotuned forms the host launches (tuning.py: candidates, shared-memory pruning) -----------

grouped_mm = triton.autotune(
    configs=tuning.triton_configs(tuning.GEMM_CANDIDATES), key=["K", "N", "MODE"],
    prune_configs_by={"early_config_prune": tuning.prune_gemm})(grouped_mm_kernel)

grouped_weight_grad = triton.autotune(
    configs=tuning.triton_configs(tuning.WEIGHT_GRAD_CANDIDATES), key=["K", "N", "DUAL", "A_SWIGLU"],
    prune_configs_by={"early_config_prune": tuning.prune_weight_grad})(grouped_weight_grad_kernel)


@triton.jit
def combine_kernel(
    y_ptr, w_ptr, out_ptr,  # y: (N·k, D) in (token, slot) order; w: (N·k,) gate weights; out: (N, D)
    K_SLOTS, D,
    stride_yr, stride_yd, stride_on, stride_od,
    HAS_W: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # out[n] = sum_j w[n, j] * y[n·k + j], in fp32, the k slots in a fixed order: no atomics.
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(0, K_SLOTS):
        r = n * K_SLOTS + j
        y = tl.load(y_ptr + r * stride_yr + cols * stride_yd, mask=cmask, other=0.0).to(tl.float32)
        if HAS_W:
            acc += tl.load(w_ptr + r).to(tl.float32) * y  # the gate weighting, fused here
        else:
            acc += y
    tl.store(out_ptr + n * stride_on + cols * stride_od, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def combine_backward_kernel(
    dout_ptr, w_ptr, y_ptr, dy_ptr, dw_ptr,  # dout (N, D); w (N·k,); y, dy (N·k, D); dw (N·k,) fp32
    K_SLOTS, D,
    stride_on, stride_od, stride_yr, stride_yd,
    BLOCK_D: tl.constexpr,
):
    # dy[n·k + j] = w[n, j] * dout[n];  dw[n, j] = <dout[n], y[n·k + j]>
    n = tl.program_id(0).to(tl.int64)
    for j in range(0, K_SLOTS):
        r = n * K_SLOTS + j
        w = tl.load(w_ptr + r).to(tl.float32)
        dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            g = tl.load(dout_ptr + n * stride_on + cols * stride_od, mask=cmask, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + r * stride_yr + cols * stride_yd, mask=cmask, other=0.0).to(tl.float32)
            tl.store(dy_ptr + r * stride_yr + cols * stride_yd, (w * g).to(dy_ptr.dtype.element_ty), mask=cmask)
            dot += g * y
        tl.store(dw_ptr + r, tl.sum(dot, axis=0))
