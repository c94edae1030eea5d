"""Expert dispatch: send each token to its k experts, run each expert on its tokens, combine.

``expert_ffn(x, topk_idx, topk_weight, w_gate, w_up, w_down, backend=...)`` is the one entry
point the MoE layer calls. Backends: ``loop`` (the plain per-expert reference every faster path is
tested against), ``torch`` (sort, permute, grouped matmul, combine), ``triton`` (Triton kernels
with a Triton backward) and ``auto`` (Triton on a CUDA GPU of compute capability >= 8.0, torch
elsewhere). Triton is imported only when the ``triton`` backend runs, so this package works where
Triton is absent.
"""

from minimoe.dispatch.backends import BACKENDS, choose_backend, expert_ffn, triton_importable, triton_ready
from minimoe.dispatch.reference import check_inputs, expert_ffn_loop
from minimoe.dispatch.sort import (combine, expert_ffn_torch, grouped_mm, grouped_mm_supported,
                                   grouped_mm_weight_grad, permute, route)

__all__ = [
    "BACKENDS", "check_inputs", "choose_backend", "combine", "expert_ffn", "expert_ffn_loop", "expert_ffn_torch",
    "expert_ffn_triton", "grouped_mm", "grouped_mm_supported", "grouped_mm_weight_grad", "permute", "route",
    "triton_importable", "triton_ready",
]


def expert_ffn_triton(*args, **kwargs):
    """The Triton dispatch (see ``minimoe.dispatch.triton_path``); imports Triton on first use."""
    from minimoe.dispatch.triton_path import expert_ffn_triton as run

    return run(*args, **kwargs)
