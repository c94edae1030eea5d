"""On a CUDA GPU: the dispatch backends and the memory profiler's CUDA path (the GPU issue's checks).

Skipped without CUDA (CI has none). On a GPU, run it alone:

    .venv/bin/python -m pytest tests/gpu -q

- every dispatch backend equals the loop, output and every gradient, in fp32, fp16 and bf16, on the
  CPU tests' edge cases and on larger sizes (Triton compiled and autotuned; bf16 only from sm80);
- the MoE layer on the GPU through ``auto``;
- the profiler's CUDA cross-check (requested bytes within its tolerance, allocated bytes within the
  block bounds) and the CUDA snapshot's timeline against the tracker's peak.

Tolerances per dtype, against the loop (which also sums in fp32): fp32 1e-4 relative (tf32 is off:
the kernels ask for IEEE fp32 products), fp16 2e-2, bf16 5e-2 (8 significant bits, three matmuls deep).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for test_dispatch's cases

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (1e-4, 2e-5), torch.float16: (2e-2, 5e-3), torch.bfloat16: (5e-2, 4e-2)}
LARGER = [("fine-grained", 512, 256, 128, 64, 6, "random"), ("coarse, skewed", 1024, 512, 1024, 8, 2, "skewed"),
          ("V3-like widths, few tokens", 64, 7168, 2048, 16, 8, "random")]


def _cuda(tensors):
    return [t.detach().cuda().requires_grad_(t.requires_grad) if t.dtype.is_floating_point else t.cuda()
            for t in tensors]


def _run(backend, tensors, dout, mask):
    from minimoe.dispatch import expert_ffn

    out = expert_ffn(*tensors, backend=backend, token_mask=mask)
    leaves = [tensors[i] for i in (0, 2, 3, 4, 5)]
    if not out.requires_grad:
        return out, [torch.zeros_like(t) for t in leaves]
    return out, torch.autograd.grad(out, leaves, dout, materialize_grads=True)


def _backends(dtype):
    from minimoe.dispatch import triton_importable
    from minimoe.dispatch.triton_path import supported

    names = ["torch", "auto"]
    if triton_importable() and supported(torch.device("cuda"), dtype) is None:
        names.append("triton")
    return names


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_backend_equals_the_loop_on_the_gpu(dtype):
    import test_dispatch as t

    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    for case in t.CASES + LARGER:
        name, n, d, h, e, k, routing = case
        tensors = _cuda(t.make_case(n, d, h, e, k, routing, dtype))
        dout = torch.randn(n, d, generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
        mask = t.case_mask(n, routing)
        mask = None if mask is None else mask.cuda()
        want, want_grads = _run("loop", tensors, dout, mask)
        rtol, atol = TOL[dtype]
        for backend in _backends(dtype):
            got, grads = _run(backend, tensors, dout, mask)
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name} {backend}: {m}")
            for what, g, w in zip(("x", "topk_weight", "w_gate", "w_up", "w_down"), grads, want_grads):
                torch.testing.assert_close(g, w, rtol=rtol, atol=atol,
                                           msg=lambda m, what=what: f"{name} {backend} d{what}: {m}")


def test_the_moe_layer_trains_through_auto_on_the_gpu():
    from minimoe.config import preset
    from minimoe.course import preferred_dtype
    from minimoe.moe import MoELayer

    layer = MoELayer(preset("tiny-moe"), backend="auto").cuda()
    x = torch.randn(4, 32, layer.cfg.d_model, device="cuda")
    with torch.autocast("cuda", dtype=preferred_dtype("cuda")):
        y, aux = layer(x, token_mask=torch.rand(4, 32, device="cuda") > 0.2)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_the_profiler_agrees_with_the_cuda_allocator():
    from minimoe.profiler import profile_training_step
    from minimoe.profiler.crosscheck import snapshot_timeline

    for kwargs in ({}, {"autocast": torch.bfloat16}):
        prof, est = profile_training_step("tiny", 8, 128, device="cuda", crosscheck=True, **kwargs)
        a = prof.allocator
        assert a["within_tolerance"], a
        assert a["allocated_within_bounds"], a
        last = prof.at_exit()
        assert (last["parameters"], last["gradients"]) == (est.parameters, est.gradients)
    from minimoe.model import build_model
    from minimoe.profiler import MemoryProfiler
    from minimoe.profiler.step import make_step_optimizer

    model = build_model("tiny").cuda()
    opt = make_step_optimizer(model)
    tokens = torch.randint(0, 100, (8, 129), device="cuda")
    with MemoryProfiler(model, opt, device="cuda", cuda_history=True) as prof:
        model(tokens[:, :-1], targets=tokens[:, 1:]).loss.backward()
        opt.step()
    series = snapshot_timeline(prof.cuda_snapshot(), device=prof.device.index)
    torch.cuda.memory._record_memory_history(enabled=None)
    assert abs(max(series) - prof.peak_above_start) <= 0.02 * max(series)
