"""Chapter 06's notebook on a pretend GPU: its GPU-only branches run on this CPU (``pretend_cuda.py``).

A cell that only runs where CUDA exists cannot be tested by nbval here, and it once failed on every
Colab GPU: it handed CPU tensors to the Triton backend, which a CUDA machine compiles for GPU
tensors only. Here ``torch.cuda.is_available()`` is true, tensors sent to "cuda" are marked CPU
tensors, mixing devices fails as on a GPU, and the Triton backend refuses CPU tensors as compiled
Triton does. Every code cell of the notebook runs (timing loops shortened), then the old cell is
shown to fail under the same harness.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import torch

from minimoe.dispatch import triton_importable

from pretend_cuda import on_cuda, pretend_cuda

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "06_the_oven_dispatch_kernel.ipynb"

pytestmark = pytest.mark.skipif(not triton_importable(), reason="the Triton branches need Triton installed")


def _quick_time(fn, device, repeats: int = 1, warmup: int = 0) -> float:
    import time

    start = time.perf_counter()
    fn()
    return max(time.perf_counter() - start, 1e-9)


@pytest.fixture()
def gpu(monkeypatch):
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    from minimoe import roofline
    from minimoe.dispatch import bench

    monkeypatch.setattr(bench, "time_call", _quick_time)  # one run per timing: correctness, not speed
    monkeypatch.setattr(bench, "GPU_GRID", bench.QUICK_GRID)  # the real grid needs a real GPU's memory
    monkeypatch.setattr(roofline, "measure_peak_flops", lambda *a, **k: 1e12)
    monkeypatch.setattr(roofline, "measure_bandwidth", lambda *a, **k: 1e11)
    threads = torch.get_num_threads()
    try:
        with pretend_cuda(monkeypatch):
            yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def _run_cells(namespace: dict) -> list[str]:
    printed = []
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            exec(compile(cell.source, f"<cell {i}>", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"cell {i} failed on the pretend GPU: {type(e).__name__}: {e}\n{cell.source}") from e
        printed.append(cell.source)
    return printed


def test_the_harness_behaves_like_a_gpu(gpu):
    a = torch.ones(3).to("cuda")
    assert torch.cuda.is_available() and a.device == torch.device("cuda", 0) and a.is_cuda
    assert on_cuda(a * 2) and on_cuda(torch.zeros(2, device=a.device)) and not on_cuda(a.cpu())
    assert not (a.cpu()).is_cuda and a.cpu().device.type == "cpu"
    with pytest.raises(RuntimeError, match="same device"):
        a + torch.ones(3)  # a GPU tensor and a CPU tensor
    assert on_cuda(a + torch.tensor(1.0))  # a 0-dim CPU tensor is a scalar: allowed, as on CUDA
    with pytest.raises(TypeError, match="numpy"):
        a.numpy()
    b = torch.ones(2, requires_grad=True)
    (g,) = torch.autograd.grad((b.to("cuda") * 3).sum(), [b])
    assert torch.equal(g, torch.full((2,), 3.0))


def test_notebook_06_runs_its_gpu_branches(gpu, capsys):
    namespace = {"__name__": "__main__"}
    _run_cells(namespace)
    out = capsys.readouterr().out
    assert "device cuda (pretend GPU, sm 9.0" in out
    assert "triton backend = loop for: output, dx" in out  # the Triton cell ran, on "cuda" tensors
    assert "auto here: triton" in out
    assert "| triton |" in out and "No GPU here" not in out  # the GPU benchmark cell ran its table
    assert namespace["device"].type == "cuda"


def test_the_old_cell_21_fails_on_the_pretend_gpu(gpu):
    """The cell as it was: CPU tensors from cell 4 handed to the Triton backend on a CUDA machine."""
    from minimoe.dispatch.triton_path import TritonUnavailable

    namespace = {"__name__": "__main__"}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells[:5]:  # imports, setup and the tensors of section 1, made on the CPU
        if cell.cell_type == "code":
            exec(cell.source, namespace)
    old = '''
def all_grads(backend):
    leaves = [t.clone().requires_grad_() for t in (x, topk_weight, w_gate, w_up, w_down)]
    xx, ww, wg, wu, wd = leaves
    y = expert_ffn(xx, topk_idx, ww, wg, wu, wd, backend=backend)
    return [y] + list(torch.autograd.grad(y, leaves, torch.ones_like(y)))

if TRITON:
    all_grads("triton")
'''
    with pytest.raises(TritonUnavailable, match="tensors on cpu"):
        exec(old, namespace)
