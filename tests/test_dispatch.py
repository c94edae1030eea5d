"""minimoe.dispatch: every backend equals the loop (output and every gradient); bad input is named.

The Triton kernels run on this CPU through Triton's interpreter. Triton decides interpreted or
compiled when it is first imported, for the whole process, and another test file in the same
worker may have imported it already; so the Triton cases run in a fresh Python started with
``TRITON_INTERPRET=1`` (one per dtype), which calls ``run_cases`` below.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimoe.dispatch import (BACKENDS, check_inputs, choose_backend, combine, expert_ffn, grouped_mm,
                              permute, route, triton_importable)
from minimoe.dispatch import triton_path
from minimoe.dispatch.debug import HostReads

ROOT = Path(__file__).resolve().parent.parent

# (rtol, atol) for the output and every gradient against the loop, per dtype. Backends differ in
# summation order only (fp32 accumulation everywhere), so the gap is a few units in the last place
# of the dtype, times the depth of the chain (three matmuls).
TOLERANCES = {
    torch.float64: (1e-5, 1e-6),  # the combine is fp32 in every backend, the loop included
    torch.float32: (1e-4, 2e-5),
    torch.float16: (2e-2, 5e-3),
    torch.bfloat16: (5e-2, 4e-2),
}

# (name, tokens, d, h, experts, k, routing)
CASES = [
    ("small", 16, 32, 16, 4, 2, "random"),
    ("odd d and h", 9, 97, 97, 5, 2, "random"),
    ("idle expert", 12, 16, 24, 6, 2, "idle"),
    ("all on one expert", 10, 16, 8, 4, 1, "one"),
    ("single token", 1, 16, 8, 3, 2, "random"),
    ("k equals E", 6, 16, 8, 5, 5, "random"),
    ("E not a power of two", 24, 32, 16, 7, 3, "skewed"),
    ("non-contiguous", 11, 24, 16, 5, 2, "noncontig"),
    # token_mask: PAD tokens (False) are dispatched nowhere and get 0
    ("some tokens masked", 14, 16, 12, 4, 2, "masked"),
    ("every token masked", 5, 16, 8, 3, 2, "all masked"),
    ("masked, all on one expert", 9, 16, 8, 4, 1, "masked one"),
]


def case_mask(n, routing, seed=0):
    """The token mask of a case: None, or (n,) bool with some (or all) tokens marked PAD."""
    if "masked" not in routing:
        return None
    if routing == "all masked":
        return torch.zeros(n, dtype=torch.bool)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(seed + 7)) > 0.4
    mask[0], mask[-1] = True, False
    return mask


def make_case(n, d, h, e, k, routing, dtype, seed=0):
    """Random inputs (leaves that require grad) for one case."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, e, generator=gen)
    if routing == "idle":
        scores[:, 0] = -1e9  # expert 0 gets no token
    if routing in ("one", "masked one"):
        scores[:, 2] = 1e9  # every token picks expert 2
    if routing == "skewed":
        scores[:, 1] += 1.5  # expert 1 gets most tokens
    idx = scores.topk(k, dim=1).indices  # (n, k), distinct per row
    weight = torch.rand(n, k, generator=gen) + 0.1
    x = torch.randn(n, d, generator=gen)
    w_gate = torch.randn(e, d, h, generator=gen) / d**0.5
    w_up = torch.randn(e, d, h, generator=gen) / d**0.5
    w_down = torch.randn(e, h, d, generator=gen) / h**0.5
    if routing == "noncontig":
        x = torch.randn(d, n, generator=gen).t()  # (n, d), column-major
        w_gate = torch.randn(e, h, d, generator=gen).transpose(1, 2) / d**0.5  # (e, d, h), transposed strides
        w_down = torch.randn(e, d, h, generator=gen).transpose(1, 2) / h**0.5
        idx = idx.t().contiguous().t()  # (n, k), column-major
        weight = weight.t().contiguous().t()
    tensors = [x.to(dtype), idx, weight, w_gate.to(dtype), w_up.to(dtype), w_down.to(dtype)]
    for i in (0, 2, 3, 4, 5):
        tensors[i] = tensors[i].detach().requires_grad_()
    return tensors


def run_backend(backend, tensors, dout, mask=None):
    out = expert_ffn(*tensors, backend=backend, token_mask=mask)
    leaves = [tensors[i] for i in (0, 2, 3, 4, 5)]
    if not out.requires_grad:  # the loop with every token masked computes nothing: all gradients are 0
        return out, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(out, leaves, dout, allow_unused=True, materialize_grads=True)
    return out, grads


def compare(backend, case, dtype, seed=0):
    name, n, d, h, e, k, routing = case
    tensors = make_case(n, d, h, e, k, routing, dtype, seed)
    dout = torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    mask = case_mask(n, routing, seed)
    want, want_grads = run_backend("loop", tensors, dout, mask)
    got, got_grads = run_backend(backend, tensors, dout, mask)
    if mask is not None:  # the yardstick itself: PAD rows are exactly 0, and so are their gradients
        assert not want[~mask].any() and not want_grads[0][~mask].any() and not want_grads[1][~mask].any()
    rtol, atol = TOLERANCES[dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name}, output: {m}")
    for what, g, w in zip(("x", "topk_weight", "w_gate", "w_up", "w_down"), got_grads, want_grads):
        assert g.dtype == w.dtype, f"{name}: d{what} dtype {g.dtype}, want {w.dtype}"
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, what=what: f"{name}, d{what}: {m}")


def run_cases(backend: str, dtype_name: str) -> None:
    """Every case for one backend and dtype (the Triton subprocess calls this)."""
    for case in CASES:
        compare(backend, case, getattr(torch, dtype_name))
    print(f"{backend} {dtype_name}: {len(CASES)} cases equal the loop")
    print(f"{backend} keeps {saved_hidden(backend)} (rows, hidden) tensors for backward")


def saved_hidden(backend: str) -> int:
    """How many (N·k, h)-shaped tensors the backend's autograd node keeps for backward (g and u: 2; act: no)."""
    n, d, h, e, k = 16, 32, 24, 4, 2
    tensors = make_case(n, d, h, e, k, "random", torch.float32)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        expert_ffn(*tensors, backend=backend)
    return shapes.count((n * k, h))


# --- the torch path ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_torch_equals_loop(case, dtype):
    compare("torch", case, dtype)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: c[0])
def test_torch_without_grouped_mm_equals_loop(case, monkeypatch):
    monkeypatch.setattr(torch, "_grouped_mm", None, raising=False)
    monkeypatch.delattr(torch, "_grouped_mm")
    compare("torch", case, torch.float32)


def test_auto_on_cpu_is_torch_and_equals_loop():
    assert choose_backend("cpu", torch.float32) == "torch"
    compare("auto", CASES[2], torch.float32)


def test_torch_path_is_deterministic():
    tensors = make_case(40, 32, 16, 8, 3, "skewed", torch.float32)
    a = expert_ffn(*tensors, backend="torch")
    b = expert_ffn(*tensors, backend="torch")
    assert torch.equal(a, b)


def test_route_permute_combine_pieces():
    idx = torch.tensor([[2, 0], [0, 1], [2, 1]])  # 3 tokens, k = 2, 4 experts (expert 3 idle)
    order, counts, offsets = route(idx, 4)
    assert order.tolist() == [1, 2, 3, 5, 0, 4]  # stable: expert 0's rows keep token order
    assert counts.tolist() == [2, 2, 2, 0] and offsets.tolist() == [2, 4, 6, 6]
    x = torch.arange(6.0).view(3, 2)
    assert permute(x, order, 2)[:, 0].tolist() == [0, 2, 2, 4, 0, 4]
    w = torch.tensor([[0.5, 0.25], [1.0, 2.0], [3.0, 4.0]])
    y = permute(x, order, 2)  # experts that are the identity
    torch.testing.assert_close(combine(y, order, w, 3), x * w.sum(1, keepdim=True))
    b = torch.randn(4, 2, 5)
    want = torch.cat([x[[0, 1]] @ b[0], x[[1, 2]] @ b[1], x[[0, 2]] @ b[2]])
    torch.testing.assert_close(grouped_mm(permute(x, order, 2), b, offsets), want)


# --- bad input -----------------------------------------------------------------------------------

def _good():
    return [t.detach() for t in make_case(4, 8, 6, 3, 2, "random", torch.float32)]


@pytest.mark.parametrize("position,bad,name", [
    (0, lambda t: t[:, :-1], "w_gate"),  # x narrower than the weights
    (0, lambda t: t[None], "x"),
    (1, lambda t: t[:-1], "topk_idx"),
    (1, lambda t: t + 5, "topk_idx"),  # ids out of range
    (1, lambda t: t - 5, "topk_idx"),
    (1, lambda t: t.float(), "topk_idx"),
    (2, lambda t: t[:, :1], "topk_weight"),
    (3, lambda t: t.double(), "w_gate"),  # another dtype
    (4, lambda t: t[:, :, :-1], "w_up"),
    (5, lambda t: t.transpose(1, 2), "w_down"),
    (5, lambda t: t.to("meta"), "w_down"),  # another device
], ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("backend", ["loop", "torch", "auto"])
def test_bad_input_names_the_argument(position, bad, name, backend):
    args = _good()
    args[position] = bad(args[position])
    with pytest.raises(ValueError, match=f"^{name}:"):
        expert_ffn(*args, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="^backend:"):
        expert_ffn(*_good(), backend="cuda")
    assert set(BACKENDS) == {"auto", "loop", "torch", "triton"}


def test_check_inputs_accepts_good_input():
    check_inputs(*_good())


# --- Triton ----------------------------------------------------------------------------------------

needs_triton = pytest.mark.skipif(not triton_importable(), reason="Triton is not installed here (Linux only)")


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_triton_equals_loop_in_the_interpreter(dtype):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    code = f"import test_dispatch as t; t.run_cases('triton', {dtype!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(CASES)} cases equal the loop" in proc.stdout
    assert "triton keeps 2 (rows, hidden) tensors for backward" in proc.stdout  # g and u; act is rebuilt


def test_the_torch_path_rebuilds_act_instead_of_keeping_it():
    assert saved_hidden("torch") == 2  # g and u


@needs_triton
def test_triton_refuses_bf16_in_the_interpreter():
    assert triton_path.supported(torch.device("cpu"), torch.bfloat16) is not None
    assert triton_path.supported(torch.device("cpu"), torch.float16) is None
    with pytest.raises(triton_path.TritonUnavailable, match="bfloat16"):
        expert_ffn(*make_case(4, 8, 6, 3, 2, "random", torch.bfloat16), backend="triton")


def test_without_triton_the_package_works_and_triton_backend_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # restored afterwards: kernels() sets it on a CPU
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setattr(triton_path, "_MODULE", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert choose_backend("cpu", torch.float32) == "torch"
    assert not triton_importable()
    compare("auto", CASES[0], torch.float32)
    with pytest.raises(triton_path.TritonUnavailable, match="needs Triton"):
        expert_ffn(*make_case(4, 8, 6, 3, 2, "random", torch.float32), backend="triton")


def test_tile_schedule_never_mixes_experts():
    counts = torch.tensor([0, 5, 16, 1, 0, 33])
    offsets = counts.cumsum(0)
    expert, start, end = triton_path.schedule(counts, offsets, 16, int(counts.sum()))
    covered = []
    for e, s, t in zip(expert.tolist(), start.tolist(), end.tolist()):
        rows = list(range(s, min(s + 16, t)))
        assert all(offsets[e] - counts[e] <= r < offsets[e] for r in rows)
        covered += rows
    assert sorted(covered) == list(range(int(counts.sum())))


# --- no host synchronisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True])
def test_the_torch_path_never_reads_device_values_back(masked):
    """What runs between the router and the combine on a GPU: route, grouped matmuls, combine, and the
    hand-written backward, all without a host sync. (On a CPU ``expert_ffn`` also checks the expert
    ids, which is free there, so the path is called past its input checks, as on a GPU.)"""
    from minimoe.dispatch.sort import expert_ffn_torch

    tensors = make_case(24, 32, 16, 6, 2, "skewed", torch.float32)  # widths that suit torch._grouped_mm
    mask = case_mask(24, "masked" if masked else "random")
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm; its loop fallback reads the offsets")
    with HostReads(strict=True):
        out = expert_ffn_torch(*tensors, token_mask=mask)
        grads = torch.autograd.grad(out, [tensors[i] for i in (0, 2, 3, 4, 5)], torch.ones_like(out))
    want = expert_ffn(*tensors, backend="loop", token_mask=mask)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=2e-5)
    assert all(g is not None for g in grads)


def test_the_sync_detector_catches_the_old_route():
    """The detector can fail: ``torch.bincount`` (the old way to count tokens per expert) trips it."""
    idx = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(AssertionError, match="bincount"), HostReads(strict=True):
        torch.bincount(idx.reshape(-1), minlength=3)


def test_route_and_the_triton_schedule_never_read_device_values_back():
    idx = torch.randint(0, 7, (50, 3))
    mask = torch.rand(50) > 0.3
    with HostReads(strict=True):
        order, counts, offsets = route(idx, 7, mask)
        tiles = triton_path.schedule(counts, offsets, 16, 150)
    assert counts.sum().item() == 3 * int(mask.sum())
    assert offsets[-1].item() == 3 * int(mask.sum())
    assert tiles[0].shape[0] == -(-150 // 16) + 7


@pytest.mark.parametrize("case", [c for c in CASES if c[1] * c[5] <= c[4] or c[1] <= 2] +
                         [("decode, batch 1", 1, 24, 16, 8, 2, "random"), ("decode, PAD", 3, 16, 8, 8, 2, "masked")],
                         ids=lambda c: c[0])
def test_the_decoding_shortcut_equals_the_loop(case):
    """Without gradients and with N·k <= E the torch path gathers the chosen experts' weights (decoding)."""
    from minimoe.dispatch.sort import expert_ffn_gathered

    name, n, d, h, e, k, routing = case
    tensors = [t.detach() for t in make_case(n, d, h, e, k, routing, torch.float32)]
    mask = case_mask(n, routing)
    want = expert_ffn(*tensors, backend="loop", token_mask=mask)
    for views in (True, False):  # a CPU's way (views of each expert), a GPU's way (gathered weights, bmm)
        torch.testing.assert_close(expert_ffn_gathered(*tensors, token_mask=mask, views=views), want,
                                   rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(expert_ffn(*tensors, backend="torch", token_mask=mask), want,
                                   rtol=1e-5, atol=1e-6)


def test_the_decoding_shortcut_with_no_tokens_gives_an_empty_result():
    """Zero tokens (an expert-parallel rank that received nothing) pass through both ways, and auto."""
    from minimoe.dispatch.sort import expert_ffn_gathered

    d, h, e, k = 6, 5, 4, 3
    x, idx, w = torch.zeros(0, d), torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    weights = [torch.randn(e, d, h), torch.randn(e, d, h), torch.randn(e, h, d)]
    for views in (True, False):
        assert expert_ffn_gathered(x, idx, w, *weights, views=views).shape == (0, d)
    with torch.no_grad():
        for backend in ("loop", "torch", "auto"):
            assert expert_ffn(x, idx, w, *weights, backend=backend).shape == (0, d), backend


def test_the_reference_depends_on_nothing_in_the_package():
    """The yardstick every backend is checked against imports no other part of minimoe."""
    import ast

    import minimoe.dispatch.reference as ref

    tree = ast.parse(Path(ref.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [m for m in modules if m.startswith("minimoe")], modules


def test_the_syncs_that_remain_are_where_chapter_06_says():
    """The loop fallback of grouped_mm reads the offsets; the CPU bounds check reads the expert ids;
    the path past the checks with torch._grouped_mm reads nothing. ``HostReads`` names each place."""
    tensors = [t.detach() for t in make_case(24, 32, 16, 6, 2, "random", torch.float32)]
    with HostReads() as reads:
        expert_ffn(*tensors, backend="torch")  # on a CPU: the bounds check in check_inputs
    assert reads.found and all("check_inputs" in r.where for r in reads.found), reads.where()
    order, _, offsets = route(tensors[1], 6)
    xs = permute(tensors[0], order, 2)
    with HostReads() as reads:
        grouped_mm(xs, tensors[3], offsets, use_gmm=False)  # the loop over experts
    assert [r.call for r in reads.found] == ["tolist"] and "grouped_mm" in reads.found[0].where
    with pytest.raises(AssertionError, match="tolist"), HostReads(strict=True):
        grouped_mm(xs, tensors[3], offsets, use_gmm=False)


def test_host_reads_sees_boolean_mask_indexing_and_item():
    x = torch.arange(6.0)
    with HostReads() as reads:
        x[x > 2]
        x.sum().item()
        x[1:3] * 2  # a slice is metadata: no read
    assert [r.call for r in reads.found] == ["indexing with a boolean mask", "item"]
    assert all("test_dispatch.py" in r.where for r in reads.found)


# --- kernel engineering: the tiles autotune chooses from -----------------------------------------------

from minimoe.dispatch import tuning  # noqa: E402


@pytest.mark.parametrize("limit,name", [(101_376, "sm86/sm89"), (166_912, "sm80"), (232_448, "sm90")])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_gemm_tile_kept_fits_the_shared_memory(limit, name, mode):
    for nbytes in (2, 4):
        tiles = tuning.gemm_tiles(nbytes, limit, mode, block_m=64)
        assert tiles, name
        for t in tiles:
            need = tuning.shared_memory_bytes(t, nbytes, 64, dual_a=mode == 3, dual_b=mode in (1, 3))
            assert need <= limit or t == tuning.FALLBACK_GEMM, (name, t, need)
            assert t.kwargs["BLOCK_K"] == 64 if nbytes == 2 else t.kwargs["BLOCK_K"] <= 32  # 16 bits: K by 64
    for dual in (False, True):
        for t in tuning.weight_grad_tiles(2, limit, dual):
            assert tuning.shared_memory_bytes(t, 2, dual_b=dual, weight_grad=True) <= limit


def test_the_99kb_gpus_lose_the_deep_pipelines_and_the_fallback_always_fits():
    big = tuning.gemm_tiles(2, 232_448, mode=1, block_m=64)
    small = tuning.gemm_tiles(2, 101_376, mode=1, block_m=64)
    assert len(small) < len(big) and set(small) <= set(big)
    assert tuning.gemm_tiles(2, 10_000, mode=3, block_m=64) == [tuning.FALLBACK_GEMM]  # nothing fits: the fallback
    assert tuning.weight_grad_tiles(2, 10_000, dual=True) == [tuning.FALLBACK_WEIGHT_GRAD]
    for mode in range(4):
        assert tuning.shared_memory_bytes(tuning.FALLBACK_GEMM, 2, 64, mode == 3, mode in (1, 3)) <= 65_536
    assert tuning.shared_memory_bytes(tuning.FALLBACK_WEIGHT_GRAD, 2, dual_b=True, weight_grad=True) <= 65_536
    # the weight gradient sums over an expert's rows: a 128 x 128 block of dW per program
    assert any(t.kwargs["BLOCK_K"] == t.kwargs["BLOCK_N"] == 128 for t in tuning.WEIGHT_GRAD_CANDIDATES)


@needs_triton
def test_pruning_picks_by_device_and_keeps_one_tile_in_the_interpreter(monkeypatch):
    import types

    configs = tuning.triton_configs(tuning.GEMM_CANDIDATES)
    a = torch.empty(4, 4, dtype=torch.bfloat16)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    (only,) = tuning.prune_gemm(configs, {"a_ptr": a}, MODE=1, BLOCK_M=16)
    assert only.kwargs == tuning.INTERPRETER_GEMM.kwargs
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for (major, minor), limit in [((8, 6), 101_376), ((9, 0), 232_448)]:
        props = types.SimpleNamespace(major=major, minor=minor)  # no shared_memory_per_block_optin: the table
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=props: p)
        kept = tuning.prune_gemm(configs, {"a_ptr": a}, MODE=1, BLOCK_M=64)
        assert kept and all(c.kwargs["BLOCK_K"] == 64 for c in kept)
        assert all(tuning.shared_memory_bytes(tuning._tile(c.num_warps, c.num_stages, **c.kwargs), 2, 64,
                                              dual_b=True) <= limit for c in kept)
    wg = tuning.prune_weight_grad(tuning.triton_configs(tuning.WEIGHT_GRAD_CANDIDATES), {"a_ptr": a}, DUAL=True)
    assert wg and all(c.kwargs["BLOCK_K"] * c.kwargs["BLOCK_N"] >= 64 * 64 for c in wg)


@needs_triton
def test_the_host_launches_the_autotuned_kernels():
    mod = triton_path.kernels()
    assert type(mod.grouped_mm).__name__ == "Autotuner" and mod.grouped_mm.keys == ["K", "N", "MODE"]
    assert len(mod.grouped_mm.configs) == len(tuning.GEMM_CANDIDATES)
    assert mod.grouped_weight_grad.keys == ["K", "N", "DUAL", "A_SWIGLU"]


@pytest.mark.parametrize("masked", [False, True])
def test_the_triton_paths_host_side_never_reads_device_values_back(masked, monkeypatch):
    """Everything the Triton autograd Function does on the host, forward and backward, with the kernel
    launches replaced by no-ops: the schedule, the buffers, the grids. (The kernels run on the device.)"""

    class Launch:
        def __getitem__(self, grid):
            return lambda *args, **meta: None

    class NoKernels:
        def __getattr__(self, name):
            return Launch()

    monkeypatch.setattr(triton_path, "kernels", lambda: NoKernels())
    tensors = make_case(24, 32, 16, 6, 2, "skewed", torch.float32)
    mask = case_mask(24, "masked" if masked else "random")
    with HostReads(strict=True):
        out = triton_path._TritonExpertFFN.apply(*tensors, mask)
        grads = torch.autograd.grad(out, [tensors[i] for i in (0, 2, 3, 4, 5)], torch.ones_like(out))
    assert out.shape == (24, 32) and len(grads) == 5
