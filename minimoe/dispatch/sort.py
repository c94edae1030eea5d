"""The sort-based dispatch in plain torch: route, permute, grouped matmul, combine.

The loop of ``reference.py`` asks every expert "which tokens are mine?" (E scans of the routing
table). Here one stable sort answers it for all experts at once:

1. ``route``: flatten the (N, k) expert ids into R = N·k assignments, sort them by expert (stable,
   so ties keep token order and the result is deterministic), count tokens per expert;
2. ``permute``: gather the tokens into expert-contiguous rows: rows ``offsets[e-1]:offsets[e]``
   all belong to expert ``e``;
3. ``grouped_mm``: one matmul per expert over its slice of rows (``torch._grouped_mm`` where the
   installed torch has it for this device, dtype and stride; a loop over experts otherwise);
4. ``combine``: weight each row by its gate value and add it back to its token, in fp32.

``expert_ffn_torch`` wraps these in an autograd Function whose backward is written out by hand
(the same formulas the Triton kernels implement), so forward and backward are both deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GMM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_GMM_FAILED: set[tuple] = set()  # (device type, dtype, strides) for which torch._grouped_mm raised


def sort_keys(topk_idx: torch.Tensor, n_experts: int, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) the expert of each flat assignment, or ``n_experts`` (past the last expert) for a masked token."""
    flat = topk_idx.reshape(-1).long()  # (R,)
    if token_mask is None:
        return flat
    k = topk_idx.shape[1]
    return flat.masked_fill(~token_mask.repeat_interleave(k), n_experts)  # PAD sorts after every expert


def route(topk_idx: torch.Tensor, n_experts: int,
          token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the N·k assignments by expert.

    Returns ``(order, counts, offsets)``:

    - ``order``: (R,) int64, ``order[r]`` is the flat assignment ``n·k + j`` placed at sorted row r;
      the token of row r is ``order[r] // k``;
    - ``counts``: (E,) int64, tokens per expert (0 for an idle expert);
    - ``offsets``: (E,) int64, the cumulative counts: expert e owns rows ``offsets[e] - counts[e]``
      up to (not including) ``offsets[e]``.

    With ``token_mask`` (N,) bool, the assignments of masked tokens sort after every expert's rows
    (rows ``offsets[-1]`` and on): no expert owns them and no count includes them.
    Everything stays on the device: the counts come from ``scatter_add_`` into a zeros tensor
    (``torch.bincount`` would read the largest id back to size its output: a host sync on a GPU).
    """
    keys = sort_keys(topk_idx, n_experts, token_mask)  # (R,)
    order = torch.argsort(keys, stable=True)  # (R,) stable: equal ids keep token order
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=keys.device)
    counts.scatter_add_(0, keys, torch.ones_like(keys))  # (E + 1,): the last bin counts masked assignments
    counts = counts[:n_experts]  # (E,)
    return order, counts, counts.cumsum(0)


def permute(x: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """Gather tokens into expert-contiguous rows: (N, d) -> (R, d), row r is token ``order[r] // k``."""
    return x.index_select(0, torch.div(order, k, rounding_mode="floor"))


def combine(y: torch.Tensor, order: torch.Tensor, weights: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Weight sorted rows by their gate value and add them back to their tokens, in fp32.

    ``y``: (R, d) expert outputs in sorted order; ``weights``: (N, k) gate weights. Returns (N, d)
    float32. ``index_add_`` is deterministic on the CPU, and on CUDA when deterministic algorithms
    are switched on (``minimoe.course.setup`` does).
    """
    k = weights.shape[1]
    w = weights.reshape(-1).float().index_select(0, order)  # (R,) gate weight of each sorted row
    out = torch.zeros(n_tokens, y.shape[1], dtype=torch.float32, device=y.device)
    return out.index_add_(0, torch.div(order, k, rounding_mode="floor"), y.float() * w[:, None])


def grouped_mm_supported(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` is worth trying for these operands (it may still raise)."""
    if not hasattr(torch, "_grouped_mm") or a.dtype not in _GMM_DTYPES or a.dtype != b.dtype:
        return False
    return (a.device.type, a.dtype, a.stride(), b.stride()) not in _GMM_FAILED


def _try_gmm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor | None:
    if not grouped_mm_supported(a, b):
        return None
    try:
        return torch._grouped_mm(a, b, offs=offsets.to(torch.int32))
    except (RuntimeError, NotImplementedError):  # this device, dtype or stride is not supported
        _GMM_FAILED.add((a.device.type, a.dtype, a.stride(), b.stride()))
        return None


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, use_gmm: bool = True) -> torch.Tensor:
    """Rows of expert e times ``b[e]``: a (R, K), b (E, K, N), offsets (E,) -> (R, N)."""
    if use_gmm and a.shape[0] > 0:
        out = _try_gmm(a, b, offsets)
        if out is not None:
            return out
    out = a.new_empty(a.shape[0], b.shape[2])
    start = 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            torch.mm(a[start:end], b[e], out=out[start:end])  # (n_e, K) @ (K, N)
        start = end
    return out


def grouped_mm_weight_grad(a: torch.Tensor, g: torch.Tensor, offsets: torch.Tensor,
                           use_gmm: bool = True) -> torch.Tensor:
    """Per-expert ``a_e^T @ g_e``: a (R, K), g (R, N) -> (E, K, N); the weight gradient of ``grouped_mm``."""
    n_experts = offsets.shape[0]
    if use_gmm and a.shape[0] > 0:
        out = _try_gmm(a.t(), g, offsets)
        if out is not None:
            return out
    out = a.new_zeros(n_experts, a.shape[1], g.shape[1])
    start = 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            torch.mm(a[start:end].t(), g[start:end], out=out[e])
        start = end
    return out


class _SortedExpertFFN(torch.autograd.Function):
    """Sort, permute, grouped SwiGLU, combine; backward written out by hand."""

    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w_gate, w_up, w_down, use_gmm, token_mask):
        n, k = topk_idx.shape
        n_experts = w_gate.shape[0]
        order, _, offsets = route(topk_idx, n_experts, token_mask)  # (R,), (E,)
        token = torch.div(order, k, rounding_mode="floor")  # (R,) token of each sorted row
        # Rows past offsets[-1] belong to masked tokens: no expert computes them (the grouped matmul
        # leaves them undefined), so they are zeroed wherever they would be read. None: every row is real.
        valid = None if token_mask is None else token_mask.index_select(0, token)[:, None]  # (R, 1)
        xs = x.index_select(0, token)  # (R, d) expert-contiguous rows
        g = grouped_mm(xs, w_gate, offsets, use_gmm)  # (R, h)
        u = grouped_mm(xs, w_up, offsets, use_gmm)  # (R, h)
        act = F.silu(g) * u  # (R, h)
        y = grouped_mm(act, w_down, offsets, use_gmm)  # (R, d)
        if valid is not None:
            y = torch.where(valid, y, 0.0)
        ws = topk_weight.reshape(-1).float().index_select(0, order)  # (R,) gate weight per row
        if valid is not None:
            ws = torch.where(valid[:, 0], ws, 0.0)
        out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
        out.index_add_(0, token, y.float() * ws[:, None])  # (N, d) fp32 combine
        # act is not saved: backward rebuilds it from g and u (one elementwise pass instead of R·h bytes kept)
        ctx.save_for_backward(x, token, order, offsets, ws, w_gate, w_up, w_down, g, u, y, valid)
        ctx.use_gmm, ctx.k, ctx.weight_dtype = use_gmm, k, topk_weight.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x, token, order, offsets, ws, w_gate, w_up, w_down, g, u, y, valid = ctx.saved_tensors
        gmm = ctx.use_gmm
        n, k = x.shape[0], ctx.k
        dout_rows = dout.float().index_select(0, token)  # (R, d) each row's upstream gradient
        dy = (dout_rows * ws[:, None]).to(x.dtype)  # (R, d) d(out)/d(y_r) = w_r (0 on masked rows)
        dtopk = None
        if ctx.needs_input_grad[2]:
            dw_rows = (dout_rows * y.float()).sum(1)  # (R,) <dout[token], y_r>
            dtopk = torch.empty(n * k, dtype=torch.float32, device=x.device)
            dtopk[order] = dw_rows  # back to the (n, j) layout
            dtopk = dtopk.view(n, k).to(ctx.weight_dtype)
        da = grouped_mm(dy, w_down.transpose(1, 2), offsets, gmm)  # (R, h)
        d_down = None
        silu_g = F.silu(g)  # (R, h): the forward's silu(g), bit for bit (same op, same dtype)
        if ctx.needs_input_grad[5]:
            # act is not saved: rebuilt from g and u (one multiply instead of R·h numbers kept)
            d_down = grouped_mm_weight_grad(silu_g * u, dy, offsets, gmm)  # (E, h, d)
        f = torch.promote_types(x.dtype, torch.float32)  # elementwise math in fp32 (fp64 stays fp64)
        gf, daf = g.to(f), da.to(f)
        # act = silu(g) * u, so du = da * silu(g) and dg = (da * u) * silu'(g), silu'(g) = s + g s (1 - s)
        # with s = sigmoid(g): aten's silu_backward applies silu' in one pass over (R, h).
        du = (daf * silu_g.to(f)).to(x.dtype)  # (R, h)
        dg = torch.ops.aten.silu_backward(daf * u.to(f), gf).to(x.dtype)  # (R, h)
        d_gate = d_up = dx = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            xs = x.index_select(0, token)  # (R, d) gathered again instead of saved
            d_gate = grouped_mm_weight_grad(xs, dg, offsets, gmm)  # (E, d, h)
            d_up = grouped_mm_weight_grad(xs, du, offsets, gmm)  # (E, d, h)
        if ctx.needs_input_grad[0]:
            dxs = grouped_mm(dg, w_gate.transpose(1, 2), offsets, gmm).to(f)  # (R, d)
            dxs += grouped_mm(du, w_up.transpose(1, 2), offsets, gmm).to(f)
            if valid is not None:
                dxs = torch.where(valid, dxs, 0.0)  # masked rows were never computed
            dx = torch.zeros(n, x.shape[1], dtype=f, device=x.device)
            dx = dx.index_add_(0, token, dxs).to(x.dtype)  # (N, d) sum over each token's k rows
        return dx, None, dtopk, d_gate, d_up, d_down, None, None


def expert_ffn_gathered(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                        w_up: torch.Tensor, w_down: torch.Tensor, token_mask: torch.Tensor | None = None,
                        views: bool | None = None) -> torch.Tensor:
    """Decoding's shortcut: run each of the R = N·k assignments through its expert directly.

    With a handful of tokens (one per sequence when decoding) there is nothing to sort, and a grouped
    matmul over E mostly empty groups is all overhead. On a CPU each assignment multiplies by views of
    its expert's weights (no copy; reading its ids is free there). On a GPU the R experts' weights are
    gathered, (R, d, h) each, into one batched matmul, so the host never reads an id. Same function
    as ``expert_ffn_loop``; no autograd (inference only). ``views``: force one way (None: by device).
    """
    n, k = topk_idx.shape
    ids = topk_idx.reshape(-1)  # (R,)
    w = topk_weight.reshape(-1, 1).float()  # (R, 1)
    if token_mask is not None:
        w = w * token_mask.repeat_interleave(k)[:, None]  # PAD: weight 0
    if views if views is not None else x.device.type == "cpu":
        rows = []
        for r, e in enumerate(ids.tolist()):
            xr = x[r // k]  # (d,)
            rows.append((F.silu(xr @ w_gate[e]) * (xr @ w_up[e])) @ w_down[e])  # (d,)
        y = torch.stack(rows).float() if rows else x.new_zeros(0, x.shape[1], dtype=torch.float32)  # (R, d)
    else:
        xs = x.repeat_interleave(k, dim=0)[:, None]  # (R, 1, d): token n's row for each of its k slots
        act = F.silu(torch.bmm(xs, w_gate[ids])) * torch.bmm(xs, w_up[ids])  # (R, 1, h)
        y = torch.bmm(act, w_down[ids])[:, 0].float()  # (R, d)
    return (y * w).view(n, k, x.shape[1]).sum(dim=1).to(x.dtype)  # (N, d), summed in fp32; N may be 0


def expert_ffn_torch(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                     w_up: torch.Tensor, w_down: torch.Tensor, use_grouped_mm: bool = True,
                     token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The sort-based dispatch (inputs already checked): same result as ``expert_ffn_loop``.

    ``use_grouped_mm=False`` forces the loop over experts for the matmuls (for comparison). Without
    gradients and with no more assignments than experts (decoding), ``expert_ffn_gathered`` runs instead.
    """
    no_grad = not torch.is_grad_enabled() or not any(
        t.requires_grad for t in (x, topk_weight, w_gate, w_up, w_down))
    if no_grad and topk_idx.numel() <= w_gate.shape[0]:
        return expert_ffn_gathered(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask)
    return _SortedExpertFFN.apply(x, topk_idx, topk_weight, w_gate, w_up, w_down, use_grouped_mm, token_mask)
