"""Decoding without waste: MLA decodes absorbed, GQA reads shared K/V heads, one cache per generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minimoe.config import ModelConfig, preset
from minimoe.generate import generate
from minimoe.model import build_model
from minimoe.model.cache import KVCache

MLA = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, attention="mla", q_lora_rank=24, kv_lora_rank=16,
                  qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, ffn_hidden=96, max_seq_len=64)
GQA = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=8, attention="gqa", n_kv_heads=2, ffn_hidden=96,
                  max_seq_len=64)


def _stepwise(model, tokens, split=5):
    cache = model.new_cache(batch=tokens.shape[0])
    parts = [model(tokens[:, :split], cache=cache).logits]
    parts += [model(tokens[:, i:i + 1], cache=cache).logits for i in range(split, tokens.shape[1])]
    return torch.cat(parts, 1)


@pytest.mark.parametrize("cfg", [MLA, MLA.with_(q_lora_rank=0), preset("tiny-moe").with_(
    attention="mla", kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=32)],
    ids=["mla", "mla-q-direct", "mla-moe"])
def test_mla_decodes_absorbed_and_equals_the_naive_form(cfg, monkeypatch):
    torch.manual_seed(0)
    model = build_model(cfg, seed=1).eval()
    tokens = torch.randint(4, cfg.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(tokens).logits  # no cache: naive
        seen = []
        monkeypatch.setattr(torch, "einsum", _recording(torch.einsum, seen))
        cached = _stepwise(model, tokens)
        # the decoding steps folded W_UK into the query ("bhtn,hnc->bhtc"), never expanded the cache
        assert "bhtn,hnc->bhtc" in seen and "bxsc,hnc->bhsn" not in seen
        monkeypatch.undo()
        for block in model.blocks:
            block.attn.impl = "naive"
        naive_cached = _stepwise(model, tokens)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(naive_cached, full, rtol=1e-4, atol=1e-5)


def _recording(fn, seen):
    def wrapper(eq, *operands):
        seen.append(eq)
        return fn(eq, *operands)
    return wrapper


def test_gqa_decoding_reads_the_shared_heads_without_copying(monkeypatch):
    torch.manual_seed(0)
    model = build_model(GQA, seed=2).eval()
    tokens = torch.randint(4, GQA.vocab_size, (3, 12))
    with torch.no_grad():
        full = model(tokens).logits
        for name in ("repeat_interleave", "repeat"):
            monkeypatch.setattr(torch.Tensor, name, _forbidden(name))
        cached = _stepwise(model, tokens)
        monkeypatch.undo()
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    for block in model.blocks:  # and the written-out reference agrees
        block.attn.impl = "reference"
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, full, rtol=1e-4, atol=1e-5)


def _forbidden(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} copies K/V out to every head")
    return fail


@pytest.mark.parametrize("cfg", [preset("tiny"), GQA, MLA, preset("tiny-moe")], ids=["mha", "gqa", "mla", "moe"])
def test_one_cache_per_generation_and_the_same_tokens_as_without(cfg, monkeypatch):
    model = build_model(cfg, seed=3)
    made = []
    real_init = KVCache.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(KVCache, "__init__", counting_init)
    prompt = torch.randint(4, cfg.vocab_size, (2, 6))
    with_cache = generate(model, prompt, 30, temperature=0)
    assert len(made) == 1  # allocated once, before the first token
    monkeypatch.undo()
    assert torch.equal(with_cache, generate(model, prompt, 30, temperature=0, use_cache=False))


def test_mla_cache_holds_one_latent_row_per_token():
    model = build_model(MLA)
    cache = model.new_cache(batch=1, max_len=10)
    model(torch.randint(4, 50, (1, 7)), cache=cache)
    assert cache.nbytes == 7 * MLA.n_layers * (MLA.kv_lora_rank + MLA.qk_rope_head_dim) * 4
    assert cache.allocated_bytes == 10 * MLA.n_layers * (MLA.kv_lora_rank + MLA.qk_rope_head_dim) * 4
    with pytest.raises(ValueError, match="holds 10 positions"):
        model(torch.randint(4, 50, (1, 4)), cache=cache)


def test_absorbed_mla_is_multi_query_attention_over_the_latent():
    """One key row [c_kv | k_r] and one value row c_kv serve every head: MQA, written out by hand."""
    torch.manual_seed(0)
    model = build_model(MLA).eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 9, MLA.d_model)
    from minimoe.model.layers import rope_angles
    cos, sin = rope_angles(torch.arange(9), MLA.qk_rope_head_dim)
    with torch.no_grad():
        q_nope, q_rope = attn._queries(x, cos, sin)
        c_kv, k_r = attn.compress(x, cos, sin)
        w_uk, w_uv = attn.up_projections()
        q = torch.cat([torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk), q_rope], -1)  # (1, H, T, d_c + d_r)
        k = torch.cat([c_kv, k_r], -1).expand(-1, MLA.n_heads, -1, -1)  # one key head, shared
        v = c_kv.expand(-1, MLA.n_heads, -1, -1)  # one value head, shared
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             scale=(MLA.qk_nope_head_dim + MLA.qk_rope_head_dim) ** -0.5)
        y = torch.einsum("bhtc,hvc->bhtv", out, w_uv).transpose(1, 2).reshape(1, 9, -1)
        torch.testing.assert_close(attn.wo(y), attn(x, cos, sin), rtol=1e-4, atol=1e-5)
    assert q.shape[-1] == MLA.kv_lora_rank + MLA.qk_rope_head_dim and v.shape[-1] == MLA.kv_lora_rank


def test_decode_step_seconds_times_each_kind_and_checks_its_arguments():
    from minimoe.generate import decode_step_seconds

    for cfg, impl in ((GQA, "auto"), (MLA, "naive"), (MLA, "absorbed"), (MLA, "auto")):
        seconds = decode_step_seconds(cfg, 5, impl, batch=2, repeats=2)
        assert isinstance(seconds, float) and seconds > 0
    with pytest.raises(ValueError, match="impl"):
        decode_step_seconds(GQA, 5, "absorbed")
    with pytest.raises(ValueError, match="context"):
        decode_step_seconds(MLA, 0)
    with pytest.raises(TypeError, match="cfg"):
        decode_step_seconds("tiny", 5)
