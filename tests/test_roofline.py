"""minimoe.roofline and the dispatch benchmark's yardsticks: the arithmetic, the traffic count, the memory fit."""

import math

import pytest
import torch

from minimoe.dispatch import bench
from minimoe.roofline import measure_bandwidth, measure_peak_flops, roofline


def test_roofline_picks_the_lower_roof():
    # 1 TFLOP on a 100 TFLOP/s, 1 TB/s machine (ridge 100 FLOP/B)
    heavy = roofline(1e12, 1e9, 100e12, 1e12)  # intensity 1000 > 100: compute-bound
    assert heavy.bound == "compute" and heavy.time_s == pytest.approx(0.01) and heavy.ridge == pytest.approx(100)
    light = roofline(1e12, 1e11, 100e12, 1e12)  # intensity 10 < 100: memory-bound
    assert light.bound == "memory" and light.time_s == pytest.approx(0.1) and light.intensity == pytest.approx(10)
    at_ridge = roofline(100.0, 1.0, 100.0, 1.0)
    assert at_ridge.compute_s == at_ridge.memory_s == at_ridge.time_s == 1.0
    assert roofline(0, 0, 1.0, 1.0).time_s == 0 and math.isinf(roofline(5, 0, 1.0, 1.0).intensity)


@pytest.mark.parametrize("kwargs,name", [
    (dict(flops=-1, bytes=1, peak=1, bandwidth=1), "flops"),
    (dict(flops=1, bytes=1, peak=0, bandwidth=1), "peak"),
    (dict(flops=1, bytes=1, peak=1, bandwidth=-2), "bandwidth"),
])
def test_roofline_names_a_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        roofline(**kwargs)
    with pytest.raises(TypeError, match="^bytes:"):
        roofline(1, "many", 1, 1)


def test_the_machine_numbers_are_measured_rates():
    peak = measure_peak_flops("cpu", n=128, repeats=1)
    bandwidth = measure_bandwidth("cpu", nbytes=2**20, repeats=1)
    assert 1e6 < peak < 1e15 and 1e6 < bandwidth < 1e14
    with pytest.raises(ValueError, match="^n:"):
        measure_peak_flops("cpu", n=4)
    with pytest.raises(ValueError, match="^nbytes:"):
        measure_bandwidth("cpu", nbytes=10)


def test_layer_traffic_counts_every_used_expert():
    case = bench.Case("c", tokens=64, d=8, h=4, experts=1000, k=2)
    # 128 assignments over 1000 experts: about 120 distinct experts get a token
    assert case.experts_used == pytest.approx(1000 * (1 - (1 - 2 / 1000) ** 64))
    flops, moved = bench.layer_traffic(case, dtype_bytes=2)
    assert flops == 6 * 64 * 2 * 8 * 4
    assert moved == pytest.approx(2 * (3 * case.experts_used * 8 * 4 + 2 * 64 * 8))
    flops_b, moved_b = bench.layer_traffic(case, 2, backward=True)
    assert flops_b == 3 * flops and moved_b == pytest.approx(2 * (9 * case.experts_used * 8 * 4 + 5 * 64 * 8))
    # with many tokens every expert is used; intensity then grows with tokens per expert: 2·(N·k/E)/bytes
    big = bench.Case("b", tokens=100_000, d=512, h=512, experts=8, k=2)
    f, b = bench.layer_traffic(big, 2)
    weights_only = 3 * 8 * 512 * 512 * 2
    assert f / weights_only == pytest.approx(2 * big.tokens_per_expert / 2)
    assert b > weights_only


def test_fine_grained_experts_turn_memory_bound_with_few_tokens_per_expert():
    peak, bandwidth = 100e12, 1e12  # ridge: 100 FLOP/B
    few = bench.case_roofline(bench.Case("few", 256, 1024, 256, 256, 8), 2, peak, bandwidth)
    many = bench.case_roofline(bench.Case("many", 65536, 1024, 256, 256, 8), 2, peak, bandwidth)
    assert few.bound == "memory" and many.bound == "compute"


def test_fit_grid_skips_what_does_not_fit_and_says_so():
    v3 = bench.GPU_GRID[-1]
    assert v3.tensor_bytes(2) > 40e9  # 256 experts of 3 x 7168 x 2048 in bf16, and their gradients
    keep, skipped = bench.fit_grid(bench.GPU_GRID, "cpu", torch.bfloat16, budget=int(8e9))
    assert v3 not in keep and any("DeepSeek-V3-like" in line and "needs about" in line for line in skipped)
    assert len(keep) + len(skipped) == len(bench.GPU_GRID)
    keep, skipped = bench.fit_grid(bench.QUICK_GRID, "cpu", torch.float32, budget=int(8e9))
    assert keep == list(bench.QUICK_GRID) and skipped == []
    with pytest.raises(ValueError, match="^budget:"):
        bench.fit_grid(bench.QUICK_GRID, budget=0)
    assert bench.free_memory("cpu") > 0


def test_make_inputs_builds_each_tensor_in_the_asked_dtype():
    case = bench.Case("c", 10, 8, 6, 4, 2)
    x, idx, w, wg, wu, wd = bench.make_inputs(case, "cpu", torch.float16)
    assert x.dtype == wg.dtype == wu.dtype == wd.dtype == torch.float16 and w.dtype == torch.float32
    assert wg.shape == (4, 8, 6) and wd.shape == (4, 6, 8) and idx.shape == (10, 2)
    assert all(t.requires_grad for t in (x, w, wg, wu, wd)) and not idx.requires_grad
    again = bench.make_inputs(case, "cpu", torch.float16)
    assert all(torch.equal(a, b) for a, b in zip((x, idx, w, wg, wu, wd), again))  # seeded


def test_bench_rows_carry_the_roofline():
    rows = bench.run(bench.QUICK_GRID[:1], repeats=1, machine=(1e11, 1e10))
    roof = [r for r in rows if r["backend"] == "roofline"]
    assert len(roof) == 1 and roof[0]["bound"] in ("compute", "memory") and roof[0]["forward_backward_s"] > 0
    assert "roofline (" in bench.format_table(rows)
