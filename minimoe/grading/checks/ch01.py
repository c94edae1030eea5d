"""Chapter 01's exercises: count a block by hand; 6·N·D and its cost; the MFU a bill implies."""

from __future__ import annotations

import torch

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.grading.registry import Student, exercise, expect_equal, expect_number, expect_tuple

block = exercise(
    "01.block_params",
    "count one transformer block's parameters by hand",
    functions=("count_block_params",),
    protects=("minimoe.recipe.count_params", "minimoe.recipe.attention_params", "minimoe.recipe.swiglu_params"),
)


def _block_reference(d_model: int, n_heads: int, n_kv_heads: int, ffn_hidden: int) -> int:
    cfg = ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=1, ffn_hidden=ffn_hidden,
                      attention="mha" if n_kv_heads == n_heads else "gqa", n_kv_heads=n_kv_heads)
    return recipe.attention_params(cfg) + recipe.swiglu_params(d_model, ffn_hidden) + 2 * d_model


def _randint(rng: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _check_blocks(student: Student, cases: list[tuple[int, int, int, int]]) -> None:
    for d_model, n_heads, n_kv, hidden in cases:
        expect_equal(student.call("count_block_params", d_model, n_heads, n_kv, hidden),
                     _block_reference(d_model, n_heads, n_kv, hidden),
                     f"count_block_params(d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv}, ffn_hidden={hidden})")


@block.check("multi-head attention block", points=2,
             hint="four d_model x d_model projections (Q, K, V, O), three SwiGLU matrices, two RMSNorm weight vectors")
def _block_mha(student: Student, rng: torch.Generator) -> None:
    cases = []
    for _ in range(4):
        n_heads = _randint(rng, 1, 16)
        d_model = n_heads * _randint(rng, 1, 64)
        cases.append((d_model, n_heads, n_heads, _randint(rng, 1, 4 * d_model)))
    _check_blocks(student, cases)


@block.check("grouped-query attention block", points=1,
             hint="with fewer key/value heads, K and V project to n_kv_heads x head_dim, where head_dim = d_model // n_heads")
def _block_gqa(student: Student, rng: torch.Generator) -> None:
    cases = []
    for _ in range(4):
        n_kv = _randint(rng, 1, 4)
        n_heads = n_kv * _randint(rng, 2, 4)
        d_model = n_heads * _randint(rng, 1, 32)
        cases.append((d_model, n_heads, n_kv, _randint(rng, 1, 3 * d_model)))
    _check_blocks(student, cases)


cost = exercise(
    "01.training_cost",
    "6·N·D and what it costs",
    functions=("training_cost",),
    protects=("minimoe.recipe.training_cost", "minimoe.recipe.training_flops"),
)


def _random_run(rng: torch.Generator) -> tuple[float, float, float, float, float]:
    u = torch.rand(5, generator=rng, dtype=torch.float64).tolist()
    n_params = 10 ** (6 + 6 * u[0])
    n_tokens = 10 ** (9 + 4 * u[1])
    peak = [312e12, 989.4e12, 1978.9e12, 65e12][int(u[2] * 4)]
    mfu = 0.05 + 0.9 * u[3]
    price = 0.5 + 4 * u[4]
    return n_params, n_tokens, peak, mfu, price


def _cost_parts(student: Student, args: tuple) -> tuple:
    return expect_tuple(student.call("training_cost", *args), 3, "training_cost should return (flops, gpu_hours, dollars)")


@cost.check("training FLOPs are 6·N·D", points=1,
            hint="2 FLOPs per parameter per token forward (a multiply and an add), twice that backward")
def _cost_flops(student: Student, rng: torch.Generator) -> None:
    for _ in range(5):
        args = _random_run(rng)
        flops, _, _ = _cost_parts(student, args)
        expect_number(flops, 6 * args[0] * args[1], "flops")


@cost.check("GPU-hours and dollars", points=2,
            hint="the GPU does peak_flops x mfu FLOPs each second; an hour has 3600 of them; dollars are hours x price")
def _cost_hours(student: Student, rng: torch.Generator) -> None:
    for _ in range(5):
        args = _random_run(rng)
        _, hours, dollars = _cost_parts(student, args)
        want = recipe.training_cost(6 * args[0] * args[1], args[2], args[3], args[4])
        expect_number(hours, want.gpu_hours, "gpu_hours")
        expect_number(dollars, want.dollars, "dollars")


mfu = exercise(
    "01.implied_mfu",
    "the model-FLOPs utilization a reported bill implies",
    functions=("implied_mfu",),
    protects=("minimoe.recipe.implied_mfu",),
)


@mfu.check("recovers the MFU behind a bill", points=2,
           hint="MFU = the FLOPs the model needed / the FLOPs the GPUs could have done in those hours")
def _mfu_roundtrip(student: Student, rng: torch.Generator) -> None:
    for _ in range(5):
        n_params, n_tokens, peak, true_mfu, _ = _random_run(rng)
        hours = recipe.training_cost(6 * n_params * n_tokens, peak, true_mfu, 1.0).gpu_hours
        expect_number(student.call("implied_mfu", n_params, n_tokens, hours, peak), true_mfu,
               f"implied_mfu(n_params={n_params:.3g}, n_tokens={n_tokens:.3g}, gpu_hours={hours:.3g}, peak={peak:.3g})")


@mfu.check("DeepSeek-V3's pre-training", points=1,
           hint="use 6·N·D with N the activated parameters, and the GPU-hours of pre-training alone")
def _mfu_v3(student: Student, rng: torch.Generator) -> None:
    n = recipe.count_params("deepseek-v3").activated
    peak = recipe.gpu("h800").bf16_flops
    want = recipe.implied_mfu(6 * n * 14.8e12, 2664e3, peak)
    expect_number(student.call("implied_mfu", n, 14.8e12, 2664e3, peak), want, "implied_mfu for DeepSeek-V3")


moe = exercise(
    "01.moe_params",
    "an MoE block's total and activated parameters",
    functions=("moe_block_params",),
    protects=("minimoe.recipe.count_params", "minimoe.recipe.swiglu_params", "minimoe.recipe.attention_params"),
)


def _moe_reference(d_model: int, n_heads: int, n_experts: int, n_shared: int, top_k: int, hidden: int
                   ) -> tuple[int, int]:
    """(total, activated) of one block, taken from recipe.count_params of a one-block model without its ends."""
    cfg = ModelConfig(name="check", vocab_size=10, d_model=d_model, n_layers=1, n_heads=n_heads, ffn_hidden=0,
                      n_routed_experts=n_experts, n_shared_experts=n_shared, top_k=top_k, expert_hidden=hidden,
                      n_dense_layers=0)
    c = recipe.count_params(cfg)
    ends = c.embedding + c.output_head + d_model  # the tables and the final norm are not part of the block
    return c.total - ends, c.activated - (d_model + c.output_head + d_model)  # one embedding row, head, final norm


def _check_moe(student: Student, cases: list[tuple[int, int, int, int, int, int]]) -> None:
    for args in cases:
        got = expect_tuple(student.call("moe_block_params", *args), 2,
                           "moe_block_params should return (total, activated)")
        want = _moe_reference(*args)
        what = ("moe_block_params(d_model={}, n_heads={}, n_experts={}, n_shared={}, top_k={}, expert_hidden={})"
                .format(*args))
        expect_equal(got[0], want[0], f"{what}: total")
        expect_equal(got[1], want[1], f"{what}: activated")


def _moe_case(rng: torch.Generator, n_shared: int) -> tuple[int, int, int, int, int, int]:
    n_heads = _randint(rng, 1, 8)
    d_model = n_heads * _randint(rng, 2, 32)
    n_experts = _randint(rng, 2, 64)
    return d_model, n_heads, n_experts, n_shared, _randint(rng, 1, n_experts), _randint(rng, 1, 2 * d_model)


@moe.check("routed experts only", points=2,
           hint="total: attention, two norms, the router (d_model x n_experts) and every expert's three matrices; "
                "activated: the same with only top_k experts")
def _moe_routed(student: Student, rng: torch.Generator) -> None:
    _check_moe(student, [_moe_case(rng, 0) for _ in range(4)])


@moe.check("shared experts, and every expert activated", points=1,
           hint="a shared expert is a SwiGLU of expert_hidden that every token uses: it counts in total and in "
                "activated; with top_k = n_experts, activated equals total")
def _moe_shared(student: Student, rng: torch.Generator) -> None:
    cases = [_moe_case(rng, _randint(rng, 1, 2)) for _ in range(3)]
    d, h, e, s, _, hidden = _moe_case(rng, 1)
    cases.append((d, h, e, s, e, hidden))
    _check_moe(student, cases)
