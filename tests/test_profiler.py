"""minimoe.profiler: storages counted once, frees seen, categories equal to the prediction to the byte."""

import pytest
import torch

from minimoe.config import ModelConfig, preset
from minimoe.model import build_model
from minimoe.profiler import (AdamWBF16, MemoryProfiler, estimate_memory, profile_training_step, quantize_fp8,
                              dequantize_fp8, to_fp8_storage)
from minimoe.recipe import count_params
from minimoe.train import TrainConfig, make_optimizer

SMALL = ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, ffn_hidden=40, max_seq_len=32)


def test_views_share_one_storage():
    with MemoryProfiler() as prof:
        a = torch.empty(1000)  # 4,000 bytes
        views = [a.view(10, 100), a[::2], a.t() if a.dim() == 2 else a.unsqueeze(0), a.reshape(100, 10).T]
        assert prof.tracker.total == 4000, "a view must not be counted again"
        b = a.reshape(100, 10).T.contiguous()  # a copy: new bytes
        assert prof.tracker.total == 8000
    assert len(prof.records) == 2 and prof.peak == 8000
    del views, b


def test_frees_are_seen_and_the_peak_stays():
    with MemoryProfiler() as prof:
        a = torch.ones(256)  # 1,024 bytes
        b = a * 2  # 1,024 more
        del a
        assert prof.tracker.total == 1024
        c = torch.zeros(10, dtype=torch.float64)  # 80
        del c
    assert prof.peak == 2048 and prof.at_exit()["other"] == 1024  # b survives the region
    assert prof.max_by_category()["temporaries"] == 1024 and prof.at_exit()["temporaries"] == 0
    del b


def test_torch_tensor_from_python_data_is_counted():
    with MemoryProfiler() as prof:
        t = torch.tensor([1.0, 2.0, 3.0])
    assert prof.peak == 12
    del t


@pytest.mark.parametrize("dtype,autocast", [(torch.float32, None), (torch.bfloat16, None),
                                            (torch.float32, torch.bfloat16)], ids=["fp32", "bf16", "mixed"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_categories_equal_the_prediction_to_the_byte(dtype, autocast, checkpointing):
    prof, est = profile_training_step(SMALL, batch=3, seq_len=16, dtype=dtype, checkpointing=checkpointing,
                                      autocast=autocast)
    last = prof.at_exit()
    assert est.exact_activations
    assert last["parameters"] == est.parameters == count_params(SMALL).total * dtype.itemsize
    assert last["gradients"] == est.gradients
    assert last["optimizer"] == est.optimizer
    assert prof.at_phase_end("forward")["activations"] == est.activations
    assert prof.baseline == est.parameters + est.optimizer  # gradients were set to None before the step


def test_mixed_precision_keeps_16_bytes_per_parameter_and_12_with_bf16_moments():
    n = count_params(SMALL).total
    tensors = sum(1 for _ in build_model(SMALL).parameters())
    for state, per_param in ((None, 16), ("bfloat16", 12)):
        prof, est = profile_training_step(SMALL, batch=2, seq_len=8, autocast="bfloat16", state_dtype=state)
        last = prof.at_exit()
        assert last["parameters"] + last["gradients"] + last["optimizer"] == per_param * n + 4 * tensors
        assert last["parameters"] == est.parameters and last["optimizer"] == est.optimizer
    mixed = estimate_memory(SMALL, 2, 8, autocast="bfloat16")
    pure = estimate_memory(SMALL, 2, 8, dtype="bfloat16")
    assert mixed.parameters == 2 * pure.parameters and mixed.logits == pure.logits  # bf16 logits either way
    with pytest.raises(ValueError, match="autocast"):
        estimate_memory(SMALL, 2, 8, dtype="bfloat16", autocast="bfloat16")


@pytest.mark.parametrize("batch,seq_len", [(3, 16), (1, 2)], ids=["activations dominate", "weights dominate"])
@pytest.mark.parametrize("kwargs", [{}, {"autocast": "bfloat16"}, {"checkpointing": True}], ids=["fp32", "mixed", "ckpt"])
def test_the_peak_lies_above_its_lower_bound(batch, seq_len, kwargs):
    prof, est = profile_training_step(SMALL, batch=batch, seq_len=seq_len, **kwargs)
    assert est.peak_lower == max(est.forward_end + est.rebuilt, est.steady)
    assert est.peak_lower <= prof.peak < 1.5 * est.peak_lower  # backward's and the optimizer's working space on top


def test_bf16_optimizer_state_halves_the_moments():
    prof, est = profile_training_step(SMALL, batch=2, seq_len=8, state_dtype=torch.bfloat16)
    full = estimate_memory(SMALL, 2, 8)
    assert prof.at_exit()["optimizer"] == est.optimizer
    assert full.optimizer - est.optimizer == count_params(SMALL).total * 2 * 2  # two moments, 2 bytes saved each


def test_allocator_agrees_with_the_tracker_on_cpu():
    prof, _ = profile_training_step(SMALL, batch=2, seq_len=16, crosscheck=True)
    a = prof.allocator
    assert a["source"].startswith("torch.profiler") and a["allocator_peak"] > 0
    assert abs(a["relative_difference"]) < 0.02, a


def test_gradients_and_modules_are_attributed():
    model = build_model(SMALL)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 8))
    with MemoryProfiler(model) as prof:
        model(tokens, targets=tokens).loss.backward()
    by_module = prof.by_module(depth=2, when="exit")
    per_block = sum(p.numel() for p in model.blocks[0].parameters()) * 4
    assert by_module["blocks.0"]["parameters"] == per_block and by_module["blocks.0"]["gradients"] == per_block
    assert prof.at_peak()["activations"] > 0
    d = prof.to_dict()
    assert d["peak"] == prof.peak and set(d["at_peak"]) == set(d["at_exit"])


def test_kv_cache_is_labelled():
    model = build_model(SMALL.with_(attention="gqa", n_kv_heads=2))
    cache = model.new_cache(batch=2, max_len=16)
    with torch.no_grad(), MemoryProfiler(model, kv_cache=cache) as prof:
        model(torch.randint(0, SMALL.vocab_size, (2, 5)), cache=cache)
    assert prof.at_exit()["kv_cache"] == estimate_memory(SMALL.with_(attention="gqa", n_kv_heads=2), 2, 5,
                                                          training=False, kv_cache=16).kv_cache


def test_nesting_and_bad_devices_raise_clearly():
    with MemoryProfiler():
        with pytest.raises(RuntimeError, match="nesting is not supported"):
            with MemoryProfiler():
                pass
    with MemoryProfiler():  # the failed inner one left nothing behind
        pass
    with pytest.raises(ValueError, match="device: got 'meta'"):
        MemoryProfiler(device="meta")
    with pytest.raises(ValueError, match="device"):
        MemoryProfiler(device="mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            MemoryProfiler(device="cuda")
    with pytest.raises(TypeError, match="model"):
        MemoryProfiler(model="tiny")
    prof = MemoryProfiler()
    with pytest.raises(RuntimeError, match="nothing recorded"):
        prof.at_peak()


def test_estimate_checks_its_inputs():
    with pytest.raises(ValueError, match="batch"):
        estimate_memory(SMALL, 0, 8)
    with pytest.raises(ValueError, match="seq_len"):
        estimate_memory(SMALL, 1, 999)
    with pytest.raises(ValueError, match="dtype"):
        estimate_memory(SMALL, 1, 8, dtype="int8")
    assert estimate_memory("tiny", 8, 128).parameters == estimate_memory(
        {k: getattr(preset("tiny"), k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden")},
        8, 128).parameters


def test_fp8_storage_saves_bytes_and_adds_a_small_error():
    w = torch.randn(64, 48)
    q, scale = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    rel = (dequantize_fp8(q, scale) - w).norm() / w.norm()
    assert 0 < rel < 0.05
    model = build_model(SMALL).eval()
    fp8 = to_fp8_storage(model)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 8))
    with torch.no_grad():
        err = (fp8(tokens).logits - model(tokens).logits).norm() / model(tokens).logits.norm()
    assert err < 0.1
    stored = sum(p.numel() * p.element_size() for p in fp8.parameters())
    assert stored < 0.4 * sum(p.numel() * 4 for p in model.parameters())


def test_bf16_adamw_follows_adamw():
    a, b = build_model(SMALL), build_model(SMALL)
    oa = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.1)
    ob = AdamWBF16(b.parameters(), lr=1e-3, weight_decay=0.1)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 8))
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(tokens, targets=tokens).loss.backward()
            o.step()
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in ob.state.values())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-4)


MOE = ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, ffn_hidden=48, n_routed_experts=4,
                  n_shared_experts=1, top_k=2, expert_hidden=16, n_dense_layers=1, max_seq_len=32)


def _backends():
    try:
        from minimoe.dispatch import BACKENDS, triton_importable
    except ImportError:
        return []
    return [b for b in BACKENDS if b != "triton" or triton_importable()]


@pytest.mark.parametrize("backend", _backends())
def test_profiler_around_the_moe_layer(backend):
    pytest.importorskip("minimoe.moe")
    interpreted = False
    if backend == "triton":
        from minimoe.dispatch import triton_ready

        assert triton_ready()
        interpreted = not torch.cuda.is_available()
    prof, est = profile_training_step(MOE, batch=2, seq_len=16, backend=backend, crosscheck=not interpreted)
    last = prof.at_exit()
    assert last["parameters"] == est.parameters and last["gradients"] == est.gradients
    assert last["optimizer"] == est.optimizer
    experts = prof.by_module(depth=5, when="exit")["blocks.1.ffn.experts.w_gate"]
    assert experts["parameters"] == MOE.n_routed_experts * MOE.d_model * MOE.expert_hidden * 4  # every expert resident
    assert prof.at_phase_end("forward")["activations"] > 0
    if not interpreted:  # Triton's CPU interpreter moves data through NumPy, which PyTorch's allocator never sees
        assert abs(prof.allocator["relative_difference"]) < 0.02, prof.allocator


def test_cli_profile(capsys):
    from minimoe.cli import main

    assert main(["profile", "--preset", "tiny", "--batch", "2", "--seq", "16"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "exact" in out and "peak" in out


def test_the_profiler_observes_a_step_it_is_handed_and_imports_no_trainer():
    """The observer never reaches into what it observes: no minimoe.train in the profiler's imports."""
    import ast
    from pathlib import Path

    import minimoe.profiler
    from minimoe.model import build_model
    from minimoe.profiler import profile_step
    from minimoe.train import Trainer, TrainConfig, mixture_batches

    for path in Path(minimoe.profiler.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m == "minimoe.train" or m.startswith("minimoe.train.") for m in names), path.name
    model = build_model(SMALL.with_(vocab_size=100, max_seq_len=128))
    trainer = Trainer(model, mixture_batches(n_train=50, n_val=0, batch_size=2, seq_len=128), TrainConfig(steps=2),
                      progress=False)
    batch = trainer.data.batch(0)
    prof = profile_step(lambda: trainer.train_step(batch), model, trainer.optimizer)
    params = list(model.parameters())  # Adam's two fp32 moments, and a 4-byte step count per tensor
    assert prof.at_exit()["optimizer"] == 2 * sum(p.numel() * 4 for p in params) + 4 * len(params)
    with pytest.raises(TypeError, match="step"):
        profile_step("not a function", model)


# --- the CUDA cross-check's arithmetic, on synthetic allocator records --------------------------------

from minimoe.profiler.crosscheck import (block_bounds, cuda_crosscheck, peak_bounds, snapshot_timeline,  # noqa: E402
                                         tracker_events)

MiB = 1 << 20


def test_block_bounds_follow_the_caching_allocators_rules():
    assert block_bounds(0) == (0, 0)
    assert block_bounds(1) == block_bounds(512) == (512, 512)  # 512 bytes at least
    assert block_bounds(513) == (1024, 1024)  # a multiple of 512
    assert block_bounds(MiB) == (MiB, MiB)  # small pool: always split exactly
    assert block_bounds(MiB + 1) == (MiB + 512, 2 * MiB + 512)  # a cached block left unsplit: up to 1 MiB more
    assert block_bounds(20 * MiB) == (20 * MiB, 21 * MiB)
    with pytest.raises(ValueError, match="nbytes"):
        block_bounds(-1)


def test_peak_bounds_replay_allocs_and_frees():
    # 100 B (a 512 B block), then 3 MiB + 100 B (rounded to 3 MiB + 512, maybe 1 MiB more), then the 100 B freed
    events = [(100, "alloc"), (3 * MiB + 100, "alloc"), (100, "free"), (200, "alloc")]
    assert peak_bounds(events) == (3 * MiB + 1024, 4 * MiB + 1024)
    # a block alive at the start, freed: its true size is unknown within its bounds, so the range widens
    events = [(2 * MiB + 1, "free_baseline"), (3 * MiB, "alloc")]
    # after both: [3 MiB - (3 MiB + 512), 4 MiB - (2 MiB + 512)]; the start itself (0) bounds the peak below
    assert peak_bounds(events) == (0, 4 * MiB - (2 * MiB + 512))
    assert peak_bounds([]) == (0, 0)
    with pytest.raises(ValueError, match="kind"):
        peak_bounds([(8, "malloc")])


def _stats(requested_current, requested_peak, allocated_current, allocated_peak):
    return {"requested_bytes.all.current": requested_current, "requested_bytes.all.peak": requested_peak,
            "allocated_bytes.all.current": allocated_current, "allocated_bytes.all.peak": allocated_peak}


def test_cuda_crosscheck_compares_like_with_like():
    """A synthetic region: 4 MiB of weights alive before (in 4 MiB of blocks), then requests of 1,000 B and
    1.5 MiB; the allocator served the 1.5 MiB from a cached 2.5 MiB block it did not split."""
    before = _stats(4 * MiB, 4 * MiB, 4 * MiB, 4 * MiB)
    request = [1000, 3 * MiB // 2]
    after = _stats(4 * MiB, 4 * MiB + sum(request), 4 * MiB, 4 * MiB + 1024 + 5 * MiB // 2)
    events = [(n, "alloc") for n in request] + [(n, "free") for n in request]
    exact = cuda_crosscheck(before, after, tracked_peak=sum(request), events=events)
    assert exact["allocator_peak"] == sum(request) and exact["relative_difference"] == 0 and exact["within_tolerance"]
    assert exact["allocated_bounds"] == (1024 + 3 * MiB // 2, 1024 + 5 * MiB // 2)
    assert exact["allocated_within_bounds"]
    # the old check: rounded blocks against max_memory_allocated would call the unsplit block a 40% miss
    assert (after["allocated_bytes.all.peak"] - 4 * MiB) / (1024 + 3 * MiB // 2) > 1.4
    # a tracker that missed a 1.5 MiB allocation is caught on both counts
    missed = cuda_crosscheck(before, after, tracked_peak=1000, events=[(1000, "alloc"), (1000, "free")])
    assert not missed["within_tolerance"] and not missed["allocated_within_bounds"]
    # scratch space under the tolerance (say cuBLAS's workspace) passes
    scratch = _stats(4 * MiB, 4 * MiB + 100 * MiB + 1 * MiB, 4 * MiB, 4 * MiB + 101 * MiB)
    ok = cuda_crosscheck(before, scratch, tracked_peak=100 * MiB, events=[(100 * MiB, "alloc")])
    assert ok["within_tolerance"] and ok["allocated_within_bounds"] and ok["tolerance"] == 0.02


def test_tracker_events_mark_the_baseline():
    model = torch.nn.Linear(10, 10, bias=False)  # its 400 B weight is alive at the start: the baseline
    with MemoryProfiler(model) as prof:
        a = torch.ones(10)  # 40 B
        model.weight = torch.nn.Parameter(torch.zeros(10, 10))  # 400 B; the old weight is freed
        del a
    assert tracker_events(prof.tracker) == [(40, "alloc"), (400, "alloc"), (400, "free_baseline"), (40, "free")]


def test_snapshot_timeline_counts_the_programs_requests():
    snapshot = {"segments": [], "device_traces": [[
        {"action": "segment_alloc", "addr": 0, "size": 2 * MiB},  # the allocator's own cudaMalloc: not counted
        {"action": "alloc", "addr": 0, "size": 1000},
        {"action": "alloc", "addr": 1024, "size": 3000},
        {"action": "free_requested", "addr": 0, "size": 1000},
        {"action": "free_completed", "addr": 0, "size": 1000},  # the same free, seen again: not counted
    ]]}
    assert snapshot_timeline(snapshot) == [1000, 4000, 3000]
    with pytest.raises(ValueError, match="device_traces"):
        snapshot_timeline({"segments": []}, device=0)
