"""Which dispatch to run: ``expert_ffn(..., backend=...)`` and the rule behind ``backend="auto"``.

- ``loop``: the per-expert reference (``reference.py``);
- ``torch``: sort, permute, grouped matmul, combine in plain torch (``sort.py``), any device;
- ``triton``: the Triton kernels (``triton_path.py``): compiled on CUDA, interpreted on a CPU;
- ``auto``: Triton on a CUDA GPU of compute capability 8.0 or more when Triton is importable and
  the dtype is supported; the torch path everywhere else (CPU, Apple MPS, a T4).
"""

from __future__ import annotations

import os
import sys

import torch

from minimoe.dispatch.reference import check_inputs, expert_ffn_loop
from minimoe.dispatch.sort import expert_ffn_torch

BACKENDS = ("auto", "loop", "torch", "triton")


def triton_importable() -> bool:
    """Whether Triton is installed here (Linux only; never on macOS)."""
    import importlib.util

    # Look, do not import: on a CPU, Triton must first be imported with TRITON_INTERPRET=1 set.
    return importlib.util.find_spec("triton") is not None


def choose_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend ``auto`` picks for tensors of this device and dtype: ``"triton"`` or ``"torch"``."""
    device = torch.device(device)
    if device.type != "cuda" or not triton_importable():
        return "torch"
    from minimoe.dispatch.triton_path import supported

    return "triton" if supported(device, dtype) is None else "torch"


def triton_ready() -> bool:
    """Get this session ready to run Triton kernels you write yourself; False where Triton is absent.

    On a machine without a CUDA GPU it sets ``TRITON_INTERPRET=1``, so kernels defined AFTER this
    call run on CPU tensors through Triton's interpreter (``@triton.jit`` reads the variable when it
    decorates). Call it before defining a kernel, in a notebook or in a script.
    """
    if not triton_importable():
        return False
    if not torch.cuda.is_available():
        use_triton_interpreter()
    return True


def use_triton_interpreter() -> None:
    """Make Triton run kernels through its interpreter in this process (CPU tensors).

    Triton reads ``TRITON_INTERPRET`` when it is imported and when a kernel is decorated. torch
    itself may import Triton early (``minimoe.course.setup`` does, through
    ``torch.use_deterministic_algorithms``); then Triton's own helper functions were made for the
    compiler, so Triton is imported again, fresh, with the variable set. Kernels decorated before
    this call stay compiled-mode: define yours after it.
    """
    os.environ["TRITON_INTERPRET"] = "1"
    lang = sys.modules.get("triton.language")
    if lang is not None and type(getattr(lang, "zeros", None)).__name__ != "InterpretedFunction":
        # (a None entry means "import blocked" and is left as it is)
        stale = [m for m, mod in sys.modules.items() if mod is not None and (m == "triton" or m.startswith("triton."))]
        for name in [m for m in stale if not m.startswith("triton._C")]:  # the C extension loads once
            del sys.modules[name]
        sys.modules.pop("minimoe.dispatch.kernels", None)


def check_backend(backend: object) -> str:
    """``backend`` if it is one of ``BACKENDS``, else ValueError naming the choices."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: got {backend!r}, need one of {', '.join(BACKENDS)}")
    return backend


def expert_ffn(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, w_gate: torch.Tensor,
               w_up: torch.Tensor, w_down: torch.Tensor, backend: str = "auto",
               token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Combined output of each token's k experts, weighted by its gate weights, differentiable.

    Shapes: x (N, d), topk_idx (N, k) int, topk_weight (N, k), w_gate and w_up (E, d, h),
    w_down (E, h, d); returns (N, d) in x's dtype. ``token_mask`` (N,) bool: tokens marked False
    (PAD) are dispatched to no expert, do no work and get 0. Every backend computes the same
    function (see ``minimoe.dispatch.reference``); ``backend`` is one of ``BACKENDS``. The
    ``torch`` and ``triton`` paths never read a device value back to the host (no sync on a GPU).
    """
    check_backend(backend)
    check_inputs(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask)
    if backend == "auto":
        backend = choose_backend(x.device, x.dtype)
    if backend == "loop":
        return expert_ffn_loop(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask)
    if backend == "torch":
        return expert_ffn_torch(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask=token_mask)
    from minimoe.dispatch.triton_path import expert_ffn_triton

    return expert_ffn_triton(x, topk_idx, topk_weight, w_gate, w_up, w_down, token_mask)
