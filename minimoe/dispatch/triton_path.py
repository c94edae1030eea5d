"""The Triton dispatch: host side. Builds the tile schedule, launches the kernels, and wraps them in
an autograd Function whose backward is Triton too (dX, dW per expert, d(gate weights)).

Triton is imported lazily: importing this module never needs it. On CUDA the kernels are compiled;
on a machine without a CUDA GPU they run through Triton's interpreter (``TRITON_INTERPRET=1``,
set before Triton is first imported), which is slow and meant for tests and teaching at tiny sizes.
The interpreter computes bfloat16 wrongly, so on a CPU only float32 and float16 are accepted.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from minimoe.dispatch.sort import route

_MODULE: ModuleType | None = None


class TritonUnavailable(RuntimeError):
    """Triton cannot run here (not installed, or the device or dtype is not supported)."""


def _mode(fn) -> str:
    return "interpreted" if type(fn).__name__ == "InterpretedFunction" else "compiled"


def kernels() -> ModuleType:
    """``minimoe.dispatch.kernels``, imported on first use.

    Without a CUDA GPU, ``TRITON_INTERPRET=1`` is set first, so the kernels run through Triton's
    interpreter. Triton decides interpreted or compiled when it is first imported, for the whole
    process: a CPU session must not import Triton before this (``triton_ready()`` is safe).
    """
    global _MODULE
    if _MODULE is None:
        from minimoe.dispatch.backends import triton_importable

        if not triton_importable():  # say so before touching any module state
            raise TritonUnavailable("backend 'triton' needs Triton, which is not installed here (Linux only); "
                                    "use backend='torch' or 'auto'")
        if not torch.cuda.is_available():
            from minimoe.dispatch.backends import use_triton_interpreter

            use_triton_interpreter()
        try:
            import triton.language  # noqa: F401
        except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
            raise TritonUnavailable(f"backend 'triton' needs Triton, which cannot be imported here ({e}); "
                                    "use backend='torch' or 'auto'") from None
        from minimoe.dispatch import kernels as module

        _MODULE = module
    return _MODULE


def _check_mode(device: torch.device) -> None:
    mod = kernels()  # sets TRITON_INTERPRET first where there is no GPU
    import triton.language as tl
    want = "compiled" if device.type == "cuda" else "interpreted"
    if _mode(mod.combine_kernel) != want or _mode(tl.zeros) != want:
        raise TritonUnavailable(
            f"backend 'triton': tensors on {device.type} need {want} kernels, but Triton was first imported "
            f"{'without' if want == 'interpreted' else 'with'} TRITON_INTERPRET=1 in this process. On a CPU, set "
            "TRITON_INTERPRET=1 before anything imports triton (minimoe.dispatch.triton_ready() does it).")


def supported(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if the Triton kernels can run on this device and dtype, else the reason why not."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"Triton's kernels here target compute capability 8.0 and up; this GPU is sm {major}.x"
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {dtype} is not supported (float32, float16, bfloat16 are)"
        return None
    if device.type == "cpu":
        if dtype not in (torch.float32, torch.float16):
            return f"on a CPU Triton runs in its interpreter, which handles float32 and float16, not {dtype}"
        return None
    return f"Triton does not run on device type {device.type!r}"


def _block_m(interpret: bool) -> int:
    """Rows per tile of the grouped GEMM (the schedule is cut for it; the other blocks are autotuned)."""
    from minimoe.dispatch.tuning import gemm_block_m

    return gemm_block_m(interpret)


class _FixedTile:
    """``kernel[grid](...)`` with the tile's blocks added: how the interpreter launches the plain kernels."""

    def __init__(self, kernel, tile):
        self.kernel, self.blocks = kernel, tile.kwargs

    def __getitem__(self, grid):
        return functools.partial(self.kernel[grid], **self.blocks)


def _gemms(mod: ModuleType, interpret: bool):
    """(grouped GEMM, weight gradient) launchers: the autotuned kernels when compiled; under the
    interpreter the plain kernels with the interpreter's one tile (nothing to time on a CPU)."""
    if not interpret:
        return mod.grouped_mm, mod.grouped_weight_grad
    from minimoe.dispatch.tuning import INTERPRETER_GEMM, INTERPRETER_WEIGHT_GRAD

    return (_FixedTile(mod.grouped_mm_kernel, INTERPRETER_GEMM),
            _FixedTile(mod.grouped_weight_grad_kernel, INTERPRETER_WEIGHT_GRAD))


def _block_d(interpret: bool) -> int:
    """Columns per program of the combine kernels (memory-bound: a wide block, no tuning needed)."""
    return 128 if interpret else 256


def schedule(counts: torch.Tensor, offsets: torch.Tensor, block_m: int, n_rows: int):
    """The tiles of the grouped GEMM, computed on the device without a host sync.

    Expert e gets ceil(counts[e] / block_m) tiles of its own rows; the grid has room for
    ceil(R / block_m) + E tiles (an upper bound), and the spare tiles at the end are empty.
    Returns ``(tile_expert, tile_start, tile_end)``, each (T,) int32.
    """
    n_experts = counts.shape[0]
    n_tiles = -(-n_rows // block_m) + n_experts
    starts = offsets - counts  # (E,)
    tiles = torch.div(counts + block_m - 1, block_m, rounding_mode="floor")  # (E,) tiles per expert
    tile_end = tiles.cumsum(0)  # (E,)
    t = torch.arange(n_tiles, device=counts.device)
    expert = torch.searchsorted(tile_end, t, right=True).clamp(max=n_experts - 1)  # (T,)
    start = starts[expert] + (t - (tile_end - tiles)[expert]) * block_m
    end = offsets[expert]
    spare = t >= tile_end[-1]
    start = torch.where(spare, torch.zeros_like(start), start)
    end = torch.where(spare, torch.zeros_like(end), end)
    return expert.int(), start.int(), end.int()


class _TritonExpertFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask):
        interpret = x.device.type != "cuda"
        mod = kernels()
        gemm, _ = _gemms(mod, interpret)
        bm, bd = _block_m(interpret), _block_d(interpret)
        n, k = topk_idx.shape
        d, h, n_experts = x.shape[1], w_gate.shape[2], w_gate.shape[0]
        rows = n * k
        # Masked tokens' assignments sort past the last expert: no tile covers them (route, schedule).
        order, counts, offsets = route(topk_idx, n_experts, token_mask)  # (R,), (E,), (E,)
        token = torch.div(order, k, rounding_mode="floor")  # (R,)
        tiles = schedule(counts, offsets, bm, rows)
        n_tiles = tiles[0].shape[0]
        ieee = x.dtype == torch.float32
        w_flat = topk_weight.reshape(-1).contiguous()  # (R,) in (token, slot) order
        if token_mask is not None:
            w_flat = w_flat * token_mask.repeat_interleave(k).to(w_flat.dtype)  # a masked token's rows weigh 0
        store_gu = any(ctx.needs_input_grad)
        act = torch.empty(rows, h, dtype=x.dtype, device=x.device)  # (R, h) sorted; not kept for backward
        g = torch.empty_like(act) if store_gu else act
        u = torch.empty_like(act) if store_gu else act
        # (R, d) in (token, slot) order; zeroed when some rows are masked, since no kernel writes those
        y = (torch.empty if token_mask is None else torch.zeros)(rows, d, dtype=x.dtype, device=x.device)
        out = torch.empty(n, d, dtype=x.dtype, device=x.device)
        if rows:
            # act = silu(x[token] @ Wg[e]) * (x[token] @ Wu[e]): the gather fused into the loads
            gemm[lambda meta: (n_tiles, triton_cdiv(h, meta["BLOCK_N"]))](
                x, x, token, w_gate, w_up, act, act, g, u, order, *tiles, d, h,
                x.stride(0), x.stride(1), *w_gate.stride(), *w_up.stride(), act.stride(0), act.stride(1),
                MODE=1, GATHER_A=True, SCATTER_C=False, STORE_GU=store_gu, IEEE=ieee, BLOCK_M=bm)
            # y = act @ Wd[e], each row written back to its (token, slot) place
            gemm[lambda meta: (n_tiles, triton_cdiv(d, meta["BLOCK_N"]))](
                act, act, order, w_down, w_down, y, y, y, y, order, *tiles, h, d,
                act.stride(0), act.stride(1), *w_down.stride(), *w_down.stride(), y.stride(0), y.stride(1),
                MODE=0, GATHER_A=False, SCATTER_C=True, STORE_GU=False, IEEE=ieee, BLOCK_M=bm)
        if n:
            # out[n] = sum_j w[n, j] * y[n, j]: the gate weighting fused into the combine
            mod.combine_kernel[(n, triton_cdiv(d, bd))](
                y, w_flat, out, k, d, y.stride(0), y.stride(1), out.stride(0), out.stride(1),
                HAS_W=True, BLOCK_D=bd)
        # act is not saved: the backward rebuilds it from g and u inside the weight-gradient kernel
        ctx.save_for_backward(x, w_flat, w_gate, w_up, w_down, order, token, offsets - counts, offsets,
                              *tiles, g, u, y)
        ctx.k, ctx.weight_dtype = k, topk_weight.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        (x, w_flat, w_gate, w_up, w_down, order, token, starts, ends, t_exp, t_start, t_end,
         g, u, y) = ctx.saved_tensors
        tiles = (t_exp, t_start, t_end)
        interpret = x.device.type != "cuda"
        mod = kernels()
        gemm, wgrad = _gemms(mod, interpret)
        bm, bd = _block_m(interpret), _block_d(interpret)
        k = ctx.k
        n, d = x.shape
        n_experts, _, h = w_gate.shape
        rows, n_tiles = n * k, t_exp.shape[0]
        ieee = x.dtype == torch.float32
        dy = torch.empty(rows, d, dtype=x.dtype, device=x.device)  # (R, d) (token, slot) order
        dw = torch.zeros(rows, dtype=torch.float32, device=x.device)  # (R,)
        dg = torch.empty(rows, h, dtype=x.dtype, device=x.device)  # (R, h) sorted
        du = torch.empty_like(dg)
        dx_rows = torch.zeros(rows, d, dtype=torch.float32, device=x.device)  # (R, d) (token, slot) order
        dx = torch.zeros(n, d, dtype=x.dtype, device=x.device)
        # contiguous (not zeros_like, which keeps a transposed input's strides): d_gate and d_up share strides
        d_gate, d_up, d_down = (torch.zeros(w.shape, dtype=w.dtype, device=w.device) for w in (w_gate, w_up, w_down))

        def wgrad_grid(kk: int, nn: int):
            return lambda meta: (n_experts, triton_cdiv(kk, meta["BLOCK_K"]), triton_cdiv(nn, meta["BLOCK_N"]))

        if rows:
            # dy[n, j] = w[n, j] * dout[n];  d(gate weight)[n, j] = <dout[n], y[n, j]>
            mod.combine_backward_kernel[(n,)](
                dout, w_flat, y, dy, dw, k, d, dout.stride(0), dout.stride(1), y.stride(0), y.stride(1),
                BLOCK_D=bd)
            # d(act) = dy[order] @ Wd[e]^T, then through SwiGLU: dg, du (the gather fused again)
            wd_t = w_down.transpose(1, 2)  # (E, d, h), a view: only the strides change
            gemm[lambda meta: (n_tiles, triton_cdiv(h, meta["BLOCK_N"]))](
                dy, dy, order, wd_t, wd_t, dg, du, g, u, order, *tiles, d, h,
                dy.stride(0), dy.stride(1), *wd_t.stride(), *wd_t.stride(), dg.stride(0), dg.stride(1),
                MODE=2, GATHER_A=True, SCATTER_C=False, STORE_GU=False, IEEE=ieee, BLOCK_M=bm)
            # dWd[e] = act_e^T @ dy_e, with act = silu(g) * u rebuilt from g and u as the rows are loaded
            wgrad[wgrad_grid(h, d)](
                g, u, order, dy, dy, order, d_down, d_down, starts, ends, h, d,
                g.stride(0), g.stride(1), dy.stride(0), dy.stride(1), *d_down.stride(),
                GATHER_A=False, GATHER_B=True, DUAL=False, A_SWIGLU=True, IEEE=ieee)
            # dWg[e] = x_e^T @ dg_e, dWu[e] = x_e^T @ du_e (one pass over the gathered x)
            wgrad[wgrad_grid(d, h)](
                x, x, token, dg, du, order, d_gate, d_up, starts, ends, d, h,
                x.stride(0), x.stride(1), dg.stride(0), dg.stride(1), *d_gate.stride(),
                GATHER_A=True, GATHER_B=False, DUAL=True, A_SWIGLU=False, IEEE=ieee)
            # dx rows = dg @ Wg[e]^T + du @ Wu[e]^T, scattered to (token, slot) order ...
            wg_t, wu_t = w_gate.transpose(1, 2), w_up.transpose(1, 2)  # (E, h, d)
            gemm[lambda meta: (n_tiles, triton_cdiv(d, meta["BLOCK_N"]))](
                dg, du, order, wg_t, wu_t, dx_rows, dx_rows, dx_rows, dx_rows, order, *tiles, h, d,
                dg.stride(0), dg.stride(1), *wg_t.stride(), *wu_t.stride(), dx_rows.stride(0), dx_rows.stride(1),
                MODE=3, GATHER_A=False, SCATTER_C=True, STORE_GU=False, IEEE=ieee, BLOCK_M=bm)
            # ... and summed over each token's k slots (no atomics)
            mod.combine_kernel[(n, triton_cdiv(d, bd))](
                dx_rows, dw, dx, k, d, dx_rows.stride(0), dx_rows.stride(1), dx.stride(0), dx.stride(1),
                HAS_W=False, BLOCK_D=bd)
        return dx, None, dw.view(n, k).to(ctx.weight_dtype), d_gate, d_up, d_down, None


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def expert_ffn_triton(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                      w_up: torch.Tensor, w_down: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton dispatch (inputs already checked): same result as ``expert_ffn_loop``."""
    reason = supported(x.device, x.dtype)
    if reason is not None:
        raise TritonUnavailable(f"backend 'triton': {reason}")
    _check_mode(x.device)  # fail early, with a clear message, where Triton is absent or in the wrong mode
    return _TritonExpertFFN.apply(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask)
