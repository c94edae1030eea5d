"""minimoe.recipe: counts, FLOPs, cost, DeepSeek-V3's figures, and clear errors."""

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from minimoe import recipe
from minimoe.config import PRESETS, ModelConfig, preset


def _n(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def built_count(cfg: ModelConfig) -> tuple[int, int]:
    """(total, activated) by building every weight as a torch module on the meta device.

    An independent route to the numbers: shapes of nn.Linear / nn.Embedding, not formulas.
    """
    kw = dict(bias=False, device="meta")
    d, h = cfg.d_model, cfg.n_heads

    def norm(n):
        return nn.RMSNorm(n, device="meta")

    def attention():
        if cfg.attention == "mla":
            qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            q = ([nn.Linear(d, cfg.q_lora_rank, **kw), norm(cfg.q_lora_rank), nn.Linear(cfg.q_lora_rank, h * qk, **kw)]
                 if cfg.q_lora_rank else [nn.Linear(d, h * qk, **kw)])
            return _n(*q, nn.Linear(d, cfg.kv_lora_rank + cfg.qk_rope_head_dim, **kw), norm(cfg.kv_lora_rank),
                      nn.Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), **kw),
                      nn.Linear(h * cfg.v_head_dim, d, **kw))
        dh, kv = cfg.dim_head, cfg.kv_heads
        return _n(nn.Linear(d, h * dh, **kw), nn.Linear(d, kv * dh, **kw), nn.Linear(d, kv * dh, **kw),
                  nn.Linear(h * dh, d, **kw))

    def swiglu(hidden):
        return _n(nn.Linear(d, hidden, **kw), nn.Linear(d, hidden, **kw), nn.Linear(hidden, d, **kw))

    block_norms = _n(norm(d), norm(d))
    total = active = 0
    for layer in range(cfg.n_layers):
        a = attention() + block_norms
        if cfg.is_moe and layer >= cfg.n_dense_layers:
            e = swiglu(cfg.expert_hidden)
            router = _n(nn.Linear(d, cfg.n_routed_experts, **kw))
            total += a + router + (cfg.n_shared_experts + cfg.n_routed_experts) * e
            active += a + router + (cfg.n_shared_experts + cfg.top_k) * e
        else:
            f = swiglu(cfg.dense_hidden)
            total += a + f
            active += a + f
    emb = _n(nn.Embedding(cfg.vocab_size, d, device="meta"))
    head = 0 if cfg.tie_embeddings else _n(nn.Linear(d, cfg.vocab_size, **kw))
    final = _n(norm(d))
    return total + emb + head + final, active + d + head + final


# DeepSeek-V3 has too many modules to build here; test_deepseek_v3_counts writes its numbers out.
CONFIGS = [c for c in PRESETS.values() if c.name != "deepseek-v3"] + [
    ModelConfig(d_model=96, n_layers=3, n_heads=6, attention="gqa", n_kv_heads=2, ffn_hidden=200, vocab_size=97),
    ModelConfig(d_model=64, n_layers=2, n_heads=4, attention="mla", kv_lora_rank=16, qk_rope_head_dim=8,
                qk_nope_head_dim=16, v_head_dim=16, tie_embeddings=True),
    ModelConfig(d_model=64, n_layers=5, n_heads=2, n_routed_experts=7, n_shared_experts=2, top_k=7,
                expert_hidden=33, n_dense_layers=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{c.attention}-{c.n_routed_experts}e")
def test_counts_equal_the_modules_built_from_the_config(cfg):
    counts = recipe.count_params(cfg)
    assert (counts.total, counts.activated) == built_count(cfg)
    assert sum(counts.by_component().values()) - counts.mtp == counts.total
    assert counts.non_embedding == counts.total - counts.embedding - counts.output_head


def test_deepseek_v3_counts():
    counts = recipe.count_params("deepseek-v3")
    # Written out independently: 3 dense + 58 MoE layers of MLA attention, embeddings, final norm.
    d, v = 7168, 129280
    attn = d * 1536 + 1536 + 1536 * 128 * 192 + d * 576 + 512 + 512 * 128 * 256 + 128 * 128 * d
    expert, router, norms = 3 * d * 2048, 256 * d, 2 * d
    dense_layer = attn + 3 * d * 18432 + norms
    assert counts.total == 3 * dense_layer + 58 * (attn + 257 * expert + router + norms) + 2 * v * d + d
    assert counts.activated == 3 * dense_layer + 58 * (attn + 9 * expert + router + norms) + v * d + d + d
    assert abs(counts.total / 671e9 - 1) < 0.001  # the report's 671B
    # The report's 37B is rounded: the count is 36.63B, which rounds to 37B (1.0% below it).
    assert round(counts.activated / 1e9) == 37 and abs(counts.activated / 37e9 - 1) < 0.0102
    assert abs(recipe.tokens_per_param(14.8e12, counts.activated) - 400) < 10
    assert abs(recipe.tokens_per_param(14.8e12, counts.total) - 22) < 0.5


def test_deepseek_v3_bill():
    bill = recipe.deepseek_v3_bill()
    assert bill["total_gpu_hours"] == 2_788_000
    assert bill["dollars"] == 5_576_000
    assert bill["pretraining_hours_from_rate"] == pytest.approx(2_664_000)
    assert 0.30 < bill["mfu_vs_bf16_peak"] < 0.40  # a plausible large-scale MFU
    assert bill["mfu_vs_fp8_peak"] == pytest.approx(bill["mfu_vs_bf16_peak"] / 2, rel=1e-3)
    assert 50 < bill["wall_days_on_2048"] < 60  # "less than two months"


def test_flops_cost_and_the_reverse_agree():
    flops = recipe.training_flops(7e9, 2e12)
    assert flops == 6 * 7e9 * 2e12
    cost = recipe.training_cost(flops, peak_flops=1e15, mfu=0.5, price_per_gpu_hour=3.0)
    assert cost.gpu_hours == pytest.approx(flops / 5e14 / 3600)
    assert cost.dollars == pytest.approx(cost.gpu_hours * 3)
    assert recipe.implied_mfu(flops, cost.gpu_hours, 1e15) == pytest.approx(0.5)
    assert cost.wall_days(100) == pytest.approx(cost.gpu_hours / 100 / 24)


def test_attention_term_is_separate_and_grows_with_context():
    cfg = preset("small")
    short = recipe.training_flops_detailed(cfg, 1e9, seq_len=128)
    long = recipe.training_flops_detailed(cfg, 1e9, seq_len=1024)
    assert short["6ND"] == long["6ND"] == recipe.training_flops(recipe.count_params(cfg).activated, 1e9)
    assert long["attention"] == pytest.approx(8 * short["attention"])
    assert short["total"] == short["6ND"] + short["attention"]
    full = recipe.attention_flops_per_token(cfg, 128, causal=False)
    assert full == pytest.approx(2 * recipe.attention_flops_per_token(cfg, 128))
    assert full == 3 * cfg.n_layers * cfg.n_heads * 2 * 128 * 2 * cfg.dim_head


def test_chinchilla_optimum():
    n, d = recipe.chinchilla_optimal(6 * 70e9 * 1.4e12)  # Chinchilla itself: 70B on 1.4T
    assert n == pytest.approx(70e9, rel=0.01) and d == pytest.approx(1.4e12, rel=0.01)
    n2, d2 = recipe.chinchilla_optimal(4 * 6 * 70e9 * 1.4e12)
    assert n2 == pytest.approx(2 * n) and d2 == pytest.approx(2 * d)


def test_dense_and_moe_at_equal_activated_parameters():
    dense, moe = recipe.count_params("tiny"), recipe.count_params("tiny-moe")
    ffn_dense = dense.dense_ffn / preset("tiny").n_layers
    moe_cfg = preset("tiny-moe")
    ffn_moe_active = (moe_cfg.n_shared_experts + moe_cfg.top_k) * 3 * moe_cfg.d_model * moe_cfg.expert_hidden
    assert ffn_moe_active == ffn_dense  # same FFN work per token
    assert moe.total > dense.total  # more in the pan
    assert recipe.training_state_bytes(moe.total) > recipe.training_state_bytes(dense.total)
    assert recipe.weight_bytes(1e9) == 2e9 and recipe.training_state_bytes(1e9) == 16e9


def test_inference_cost():
    assert recipe.inference_flops_per_token(37e9) == 74e9
    cost = recipe.answer_cost(37e9, 1000, peak_flops=1e15, mfu=0.5, price_per_gpu_hour=2.0)
    assert cost.flops == 74e12
    assert cost.dollars == pytest.approx(74e12 / 5e14 / 3600 * 2)


@pytest.mark.parametrize("call, message", [
    (lambda: recipe.training_flops(7e9, -1), "n_tokens"),
    (lambda: recipe.training_flops(0, 1e9), "n_params"),
    (lambda: recipe.training_flops(float("nan"), 1e9), "n_params"),
    (lambda: recipe.training_cost(1e20, 1e15, 0, 2), "mfu"),
    (lambda: recipe.training_cost(1e20, 1e15, 1.5, 2), "mfu"),
    (lambda: recipe.training_cost(1e20, 1e15, 0.4, -1), "price"),
    (lambda: recipe.gpu("h1000"), "gpu"),
    (lambda: recipe.count_params("huge"), "preset"),
    (lambda: recipe.chinchilla_optimal(-5), "flops"),
    (lambda: recipe.implied_mfu(1e20, 0, 1e15), "gpu_hours"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=0), "d_model"),
    (dict(attention="linear"), "attention"),
    (dict(n_heads=3), "n_heads"),
    (dict(attention="gqa", n_kv_heads=3), "n_kv_heads"),
    (dict(n_routed_experts=4, top_k=5, expert_hidden=8), "top_k"),
    (dict(top_k=2), "n_routed_experts"),
    (dict(attention="mla"), "kv_lora_rank"),
])
def test_bad_configs_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)
    with pytest.raises(TypeError, match="d_model"):
        ModelConfig(d_model=12.5)


def test_recipe_needs_no_torch():
    code = "import sys, minimoe.recipe; minimoe.recipe.count_params('deepseek-v3'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli(capsys):
    from minimoe.cli import main

    assert main(["recipe", "--preset", "deepseek-v3"]) == 0
    out = capsys.readouterr().out
    assert "2.788M" in out and "$5.576M" in out and "671B" in out and "36.63B" in out
    assert main(["recipe", "--params", "7e9", "--tokens", "2e12", "--gpu", "h100", "--mfu", "0.4",
                 "--price", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "8.4e+22 FLOPs" in out and "58.96K GPU-hours" in out and "$117,917" in out
    assert main(["recipe", "--params", "7e9", "--tokens", "2e12", "--mfu", "0"]) == 2
    assert "mfu" in capsys.readouterr().err
    assert main(["recipe", "--params", "7e9", "--tokens", "2e12", "--gpu", "t4", "--fp8"]) == 2
    assert main(["recipe"]) == 2


def test_human_units():
    assert recipe.human(671e9) == "671B"
    assert recipe.human(2.788e6) == "2.788M"
    assert recipe.human(989.4e12, "FLOP/s") == "989.4 TFLOP/s"
    assert recipe.dollars(5.576e6) == "$5.576M"
    assert recipe.human(829_568) == "829.6K"


def test_kv_cache_per_token():
    v3 = preset("deepseek-v3")
    assert recipe.kv_elements_per_token(v3) == 61 * 576 == 35_136
    assert recipe.kv_bytes_per_token(v3) == 70_272
    mha = v3.with_(attention="mha", n_heads=128, head_dim=128)
    gqa = v3.with_(attention="gqa", n_kv_heads=8, head_dim=128)
    assert recipe.kv_bytes_per_token(mha) == 61 * 2 * 128 * 128 * 2
    assert recipe.kv_bytes_per_token(gqa) == 61 * 2 * 8 * 128 * 2
    assert recipe.max_context(v3, 70_272 * 1000, batch=2) == 500
    with pytest.raises(ValueError, match="bytes_per_element"):
        recipe.kv_bytes_per_token(v3, 0)


def test_decode_attention_cost_counts_flops_and_cache_bytes():
    v3 = preset("deepseek-v3")
    absorbed = recipe.decode_attention_cost(v3, 4096)
    # multi-query attention over the latent: 128 heads, keys 576 wide, values 512 wide
    assert absorbed["flops"] == 2 * 128 * 4096 * 576 + 2 * 128 * 4096 * 512
    assert absorbed["cache_bytes"] == 4096 * 576 * 2
    assert absorbed["intensity"] == pytest.approx(128 * 1088 / 576)
    naive = recipe.decode_attention_cost(v3, 4096, absorbed=False)
    assert naive["cache_bytes"] == absorbed["cache_bytes"]  # the same cache, read either way
    assert naive["flops"] == 2 * 4096 * 512 * 128 * (128 + 128) + 2 * 128 * 4096 * (128 + 64) + 2 * 128 * 4096 * 128
    mha = recipe.decode_attention_cost(v3.with_(attention="mha"), 100, bytes_per_element=2)
    assert mha["intensity"] == 1.0 and mha["cache_bytes"] == 2 * 128 * 100 * 128 * 2
    gqa = recipe.decode_attention_cost(v3.with_(attention="gqa", n_kv_heads=8), 100)
    assert gqa["flops"] == mha["flops"] and gqa["intensity"] == 16.0
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="context"):
            recipe.decode_attention_cost(v3, bad)
    with pytest.raises(ValueError, match="bytes_per_element"):
        recipe.decode_attention_cost(v3, 10, bytes_per_element=0)


def test_serving_budget_puts_the_weights_in_memory_first():
    v3 = preset("deepseek-v3")
    node = 8 * 80 * 2**30
    fp8 = recipe.serving_budget(v3, 8)
    assert fp8["weight_bytes"] == recipe.count_params(v3).total
    assert fp8["left_bytes"] == node - fp8["weight_bytes"] > 0
    assert fp8["kv_tokens"] == int(fp8["left_bytes"] // 70_272)
    bf16 = recipe.serving_budget(v3, 8, weight_bytes=2)
    assert bf16["left_bytes"] < 0 and bf16["kv_tokens"] == 0  # 1.34 TB of weights do not fit in 687 GB
    two_nodes = recipe.serving_budget(v3, 16)
    assert two_nodes["kv_tokens"] > 40 * fp8["kv_tokens"]
    with pytest.raises(ValueError, match="n_gpus"):
        recipe.serving_budget(v3, 0)
    with pytest.raises(ValueError, match="weight_bytes"):
        recipe.serving_budget(v3, 8, weight_bytes=-1)


def test_gpu_table_names_the_16_bit_format_of_its_peak():
    assert recipe.gpu("t4").half == "fp16" and not recipe.gpu("t4").has_bf16  # a T4 has no bf16 units
    assert {g.half for name, g in recipe.GPUS.items() if name != "t4"} == {"bf16"}
