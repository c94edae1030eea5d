"""The reference dispatch: a plain loop over experts, obviously right, used to check every fast path.

Shapes (N tokens, d model width, h expert hidden size, E experts, k experts per token):

- ``x``: (N, d) tokens;
- ``topk_idx``: (N, k) int64, the experts each token goes to (distinct within a row);
- ``topk_weight``: (N, k), each chosen expert's gate weight;
- ``w_gate``, ``w_up``: (E, d, h); ``w_down``: (E, h, d): the SwiGLU experts, stacked;
- returns (N, d): for each token, Σ_j topk_weight[n, j] · expert_{topk_idx[n, j]}(x[n]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "loop", "torch", "triton")  # implemented in minimoe.dispatch.backends


def check_inputs(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                 w_up: torch.Tensor, w_down: torch.Tensor) -> None:
    """Raise ValueError (naming the argument) unless the shapes, dtypes and devices fit together."""
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
    if topk_idx.numel() and (int(topk_idx.min()) < 0 or int(topk_idx.max()) >= e):
        fail("topk_idx", f"ids from {int(topk_idx.min())} to {int(topk_idx.max())}", f"ids in [0, {e})")
    for name, t in (("topk_idx", topk_idx), ("topk_weight", topk_weight), ("w_gate", w_gate), ("w_up", w_up),
                    ("w_down", w_down)):
        if t.device != x.device:
            fail(name, f"device {t.device}", f"x's device {x.device}")
    for name, t in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        if t.dtype != x.dtype:
            fail(name, str(t.dtype), f"x's dtype {x.dtype}")


def expert_ffn_loop(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
                    w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """For each expert: gather its tokens, run its SwiGLU, add the weighted result back."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (N, d), accumulated in fp32
    for e in range(w_gate.shape[0]):
        token, slot = (topk_idx == e).nonzero(as_tuple=True)  # which tokens chose e, and in which of their k slots
        if token.numel() == 0:
            continue  # an expert with no tokens does no work
        xe = x[token]  # (n_e, d)
        ye = (F.silu(xe @ w_gate[e]) * (xe @ w_up[e])) @ w_down[e]  # (n_e, d)
        out.index_add_(0, token, ye.float() * topk_weight[token, slot].float()[:, None])
    return out.to(x.dtype)


def expert_ffn(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
               w_up: torch.Tensor, w_down: torch.Tensor, backend: str = "loop") -> torch.Tensor:
    """Combined output of each token's k experts, weighted by its gate weights. See the module docstring.

    The same function as ``minimoe.dispatch.expert_ffn`` (kept here for code that imports it from
    this module); ``backend`` is one of ``BACKENDS``.
    """
    from minimoe.dispatch.backends import expert_ffn as dispatch

    return dispatch(x, topk_idx, topk_weight, w_gate, w_up, w_down, backend=backend)
