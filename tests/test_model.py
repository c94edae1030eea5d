"""minimoe.model and minimoe.generate: shapes, causality, the fast paths against plain references."""

import pytest
import torch
from torch import nn

from minimoe import recipe
from minimoe.config import ModelConfig, preset
from minimoe.generate import generate
from minimoe.model import RMSNorm, apply_rope, build_model, causal_mask, reference_attention, rope_angles
from minimoe.model.transformer import cross_entropy

SMALL = ModelConfig(vocab_size=37, d_model=48, n_layers=2, n_heads=4, ffn_hidden=97, max_seq_len=64)
CONFIGS = [SMALL, SMALL.with_(attention="gqa", n_kv_heads=2), SMALL.with_(tie_embeddings=True), preset("tiny")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.attention}-kv{c.kv_heads}-tied{c.tie_embeddings}-{c.d_model}")
def test_parameter_count_equals_the_recipe(cfg):
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == recipe.count_params(cfg).total


def test_shapes_and_loss():
    model = build_model(SMALL)
    tokens = torch.randint(0, SMALL.vocab_size, (3, 11))
    out = model(tokens, targets=tokens)
    assert out.logits.shape == (3, 11, SMALL.vocab_size)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.aux_loss.item() == 0 and len(out.aux) == SMALL.n_layers


def test_same_seed_same_model():
    a, b, c = build_model(SMALL, seed=1), build_model(SMALL, seed=1), build_model(SMALL, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.embed.weight, c.embed.weight)


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["mha", "gqa"])
def test_sdpa_equals_the_written_out_attention(cfg):
    model = build_model(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 13))
    fast = model(tokens).logits
    for block in model.blocks:
        block.attn.impl = "reference"
    torch.testing.assert_close(model(tokens).logits, fast, rtol=1e-5, atol=1e-5)


def test_reference_attention_on_one_query_is_a_weighted_mean():
    q, k, v = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    w = (q @ k.transpose(-2, -1) / 2).softmax(-1)  # the last query sees every key
    torch.testing.assert_close(reference_attention(q, k, v), w @ v)


def test_causal_mask():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1, 4).tolist() == [[True, True, True, True]]  # one new query after three cached


def test_changing_a_future_token_leaves_earlier_logits_alone():
    model = build_model(SMALL)
    tokens = torch.randint(0, SMALL.vocab_size, (1, 12))
    before = model(tokens).logits
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % SMALL.vocab_size
    after = model(changed).logits
    torch.testing.assert_close(after[:, :7], before[:, :7])
    assert not torch.allclose(after[:, 7:], before[:, 7:])


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["mha", "gqa"])
def test_cache_gives_the_logits_of_a_full_forward(cfg):
    model = build_model(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 15))
    full = model(tokens).logits
    cache = model.new_cache(batch=2)
    pieces = [model(tokens[:, :6], cache=cache).logits]
    pieces += [model(tokens[:, i:i + 1], cache=cache).logits for i in range(6, 15)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 15
    assert cache.nbytes == 2 * cfg.n_layers * 2 * cfg.kv_heads * 15 * cfg.dim_head * 4


def test_greedy_decoding_is_the_same_with_and_without_the_cache():
    model = build_model(SMALL)
    prompt = torch.randint(0, SMALL.vocab_size, (3, 5))
    with_cache = generate(model, prompt, 40, temperature=0)
    without = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without) and with_cache.shape == (3, 40)


def test_sampling_is_seeded_and_top_k_restricts_it():
    model = build_model(SMALL)
    prompt = [1, 2, 3]
    a = generate(model, prompt, 20, temperature=1.0, seed=7)
    assert torch.equal(a, generate(model, prompt, 20, temperature=1.0, seed=7))
    top1 = generate(model, prompt, 20, temperature=1.0, top_k=1, seed=3)
    assert torch.equal(top1, generate(model, prompt, 20, temperature=0))


def test_generation_stops_at_the_stop_token():
    model = build_model(SMALL)
    first = generate(model, [4, 5], 1, temperature=0)[0, 0].item()
    assert generate(model, [4, 5], 30, temperature=0, stop_token=first).shape == (1, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=5, temperature=-1), "temperature"),
    (dict(max_new_tokens=5, top_k=0), "top_k"),
    (dict(max_new_tokens=100), "exceed"),
])
def test_generate_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(build_model(SMALL), [1, 2], **kwargs)


def test_model_rejects_bad_input():
    model = build_model(SMALL)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="at most"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_auxiliary_losses_reach_the_output_explicitly():
    class Taxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(SMALL.d_model, SMALL.d_model, bias=False)

        def forward(self, x):
            return self.lin(x), {"loss": torch.tensor(0.25), "tokens": x.shape[0] * x.shape[1]}

    model = build_model(SMALL, ffn_factory=lambda i, cfg: Taxed())
    tokens = torch.randint(0, SMALL.vocab_size, (2, 6))
    out = model(tokens, targets=tokens)
    assert out.aux_loss.item() == pytest.approx(0.25 * SMALL.n_layers)
    assert out.loss.item() == pytest.approx(out.ce.item() + out.aux_loss.item())
    assert [a["tokens"] for a in out.aux] == [12] * SMALL.n_layers


def test_rmsnorm_matches_torch():
    x = torch.randn(4, 7, 16) * 3
    ours, theirs = RMSNorm(16), nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_()
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x))


def test_rope_makes_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def score(m, n):
        cm, sm = rope_angles(torch.tensor([m]), 8)
        cn, sn = rope_angles(torch.tensor([n]), 8)
        return (apply_rope(q, cm, sm) * apply_rope(k, cn, sn)).sum().item()

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    cos, sin = rope_angles(torch.arange(6), 8)
    x = torch.randn(1, 2, 6, 8, generator=g)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))  # a rotation
    with pytest.raises(ValueError, match="even"):
        rope_angles(torch.arange(3), 7)


def test_masked_cross_entropy_scores_only_marked_positions():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 3:] = True
    want = nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 11), targets[:, 3:].reshape(-1))
    torch.testing.assert_close(cross_entropy(logits, targets, mask), want)
    with pytest.raises(ValueError, match="loss_mask"):
        cross_entropy(logits, targets, torch.zeros(2, 5))


MLA = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, attention="mla", q_lora_rank=24, kv_lora_rank=16,
                  qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, ffn_hidden=96, max_seq_len=64)


@pytest.mark.parametrize("cfg", [MLA, MLA.with_(q_lora_rank=0)], ids=["q-compressed", "q-direct"])
def test_mla_counts_absorbs_and_caches(cfg):
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == recipe.count_params(cfg).total
    tokens = torch.randint(0, cfg.vocab_size, (2, 11))
    naive = model(tokens).logits
    for block in model.blocks:
        block.attn.impl = "absorbed"
    torch.testing.assert_close(model(tokens).logits, naive, rtol=1e-5, atol=1e-5)
    cache = model.new_cache(batch=2)
    stepwise = [model(tokens[:, :4], cache=cache).logits] + [model(tokens[:, i:i + 1], cache=cache).logits
                                                           for i in range(4, 11)]
    torch.testing.assert_close(torch.cat(stepwise, 1), naive, rtol=1e-5, atol=1e-5)
    assert cache.nbytes == 2 * 11 * recipe.kv_elements_per_token(cfg) * 4  # batch x tokens x numbers x fp32
    assert torch.equal(generate(model, tokens[:, :3], 20, temperature=0),
                       generate(model, tokens[:, :3], 20, temperature=0, use_cache=False))
