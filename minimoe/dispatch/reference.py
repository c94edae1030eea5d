"""The reference dispatch: a plain loop over experts, obviously right, used to check every fast path.

Shapes (N tokens, d model width, h expert hidden size, E experts, k experts per token):

- ``x``: (N, d) tokens;
- ``topk_idx``: (N, k) int64, the experts each token goes to (distinct within a row);
- ``topk_weight``: (N, k), each chosen expert's gate weight;
- ``w_gate``, ``w_up``: (E, d, h); ``w_down``: (E, h, d): the SwiGLU experts, stacked;
- ``token_mask``: (N,) bool or None: tokens marked False (PAD) go to no expert and get 0;
- returns (N, d): for each token, Σ_j topk_weight[n, j] · expert_{topk_idx[n, j]}(x[n]).

This module depends on nothing else in the package: it is the yardstick, not a client.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

DEBUG_CHECKS = os.environ.get("MINIMOE_DEBUG_DISPATCH", "") not in ("", "0")
"""Also check expert ids against [0, E) on a GPU, where reading them back stalls the host."""


def check_inputs(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                 w_up: torch.Tensor, w_down: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
    """Raise ValueError (naming the argument) unless the shapes, dtypes and devices fit together.

    Shapes, dtypes and devices are metadata: checking them never waits for the device. Whether
    every expert id lies in [0, E) is data: on a CPU it is checked (free), on a GPU only when
    ``MINIMOE_DEBUG_DISPATCH=1`` (reading device values back would stop the host at every layer).
    """
    def fail(name: str, got: str, need: str) -> None:
        raise ValueError(f"{name}: got {got}, need {need}")

    for name, t in (("x", x), ("topk_idx", topk_idx), ("topk_weight", topk_weight), ("w_gate", w_gate),
                    ("w_up", w_up), ("w_down", w_down)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: got {type(t).__name__}, need a torch.Tensor")
    if x.dim() != 2:
        fail("x", f"shape {tuple(x.shape)}", "(tokens, d_model)")
    n, d = x.shape
    if w_gate.dim() != 3 or w_gate.shape[1] != d:
        fail("w_gate", f"shape {tuple(w_gate.shape)}", f"(experts, d_model={d}, hidden)")
    e, _, h = w_gate.shape
    if tuple(w_up.shape) != (e, d, h):
        fail("w_up", f"shape {tuple(w_up.shape)}", f"{(e, d, h)} like w_gate")
    if tuple(w_down.shape) != (e, h, d):
        fail("w_down", f"shape {tuple(w_down.shape)}", f"{(e, h, d)}")
    if topk_idx.dim() != 2 or topk_idx.shape[0] != n:
        fail("topk_idx", f"shape {tuple(topk_idx.shape)}", f"(tokens={n}, k)")
    if topk_idx.dtype not in (torch.int64, torch.int32):
        fail("topk_idx", str(topk_idx.dtype), "an integer tensor of expert ids")
    if tuple(topk_weight.shape) != tuple(topk_idx.shape):
        fail("topk_weight", f"shape {tuple(topk_weight.shape)}", f"{tuple(topk_idx.shape)} like topk_idx")
    if not topk_weight.dtype.is_floating_point:
        fail("topk_weight", str(topk_weight.dtype), "a floating-point tensor")
    if token_mask is not None:
        if not isinstance(token_mask, torch.Tensor):
            raise TypeError(f"token_mask: got {type(token_mask).__name__}, need a torch.Tensor or None")
        if token_mask.dtype != torch.bool or tuple(token_mask.shape) != (n,):
            fail("token_mask", f"shape {tuple(token_mask.shape)} {token_mask.dtype}", f"({n},) bool, one per token")
    for name, t in (("topk_idx", topk_idx), ("topk_weight", topk_weight), ("w_gate", w_gate), ("w_up", w_up),
                    ("w_down", w_down), ("token_mask", token_mask)):
        if t is not None and t.device != x.device:
            fail(name, f"device {t.device}", f"x's device {x.device}")
    if topk_idx.numel() and (x.device.type == "cpu" or DEBUG_CHECKS):
        lo, hi = torch.aminmax(topk_idx)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= e:
            fail("topk_idx", f"ids from {lo} to {hi}", f"ids in [0, {e})")
    for name, t in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        if t.dtype != x.dtype:
            fail(name, str(t.dtype), f"x's dtype {x.dtype}")


def expert_ffn_loop(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                    w_up: torch.Tensor, w_down: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """For each expert: gather its tokens, run its SwiGLU, add the weighted result back."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (N, d), accumulated in fp32
    chosen = topk_idx if token_mask is None else topk_idx.masked_fill(~token_mask[:, None], -1)  # PAD: no expert
    for e in range(w_gate.shape[0]):
        token, slot = (chosen == e).nonzero(as_tuple=True)  # which tokens chose e, and in which of their k slots
        if token.numel() == 0:
            continue  # an expert with no tokens does no work
        xe = x[token]  # (n_e, d)
        ye = (F.silu(xe @ w_gate[e]) * (xe @ w_up[e])) @ w_down[e]  # (n_e, d)
        out.index_add_(0, token, ye.float() * topk_weight[token, slot].float()[:, None])
    return out.to(x.dtype)

