"""minimoe.moe: routers against hand-written references, balance losses, capacity, the MoE layer."""

import math

import pytest
import torch

import minimoe.dispatch
from minimoe import recipe
from minimoe.config import ModelConfig, preset
from minimoe.model import build_model
from minimoe.moe import (MoELayer, bias_update, capacity_keep, expert_capacity, expert_counts, group_limited_mask,
                         load_stats, mixtral_router, sequence_balance_loss, sigmoid_router, softmax_router, switch_aux_loss,
                         z_loss)
from minimoe.train import Trainer, TrainConfig, layer_stats

CFG = ModelConfig(name="t", vocab_size=31, d_model=24, n_layers=2, n_heads=2, n_routed_experts=8,
                  n_shared_experts=1, top_k=2, expert_hidden=12, max_seq_len=32)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- routers against references written one token at a time ------------------------------------------

def test_softmax_router_is_softmax_then_topk():
    logits = torch.randn(20, 8, generator=gen())
    for renorm in (False, True):
        w, idx = softmax_router(logits, 3, renormalize=renorm)
        for n in range(20):
            p = [math.exp(v) for v in logits[n].tolist()]
            p = [v / sum(p) for v in p]
            best = sorted(range(8), key=lambda i: -p[i])[:3]
            assert idx[n].tolist() == best
            want = [p[i] for i in best]
            if renorm:
                want = [v / sum(want) for v in want]
            torch.testing.assert_close(w[n], torch.tensor(want))


def test_switch_top1_gate_is_the_probability_and_mixtral_equals_renormalized_softmax():
    logits = torch.randn(50, 6, generator=gen(1))
    w, idx = softmax_router(logits, 1)
    torch.testing.assert_close(w[:, 0], logits.softmax(-1).max(-1).values)  # Switch: p, not 1
    mw, midx = mixtral_router(logits, 2)
    rw, ridx = softmax_router(logits, 2, renormalize=True)
    assert torch.equal(midx, ridx)
    torch.testing.assert_close(mw, rw)


def test_sigmoid_router_bias_chooses_but_never_weighs():
    logits, bias = torch.randn(30, 8, generator=gen(2)), torch.randn(8, generator=gen(3)) * 0.3
    w, idx = sigmoid_router(logits, 3, bias=bias, scaling=2.5)
    s = logits.sigmoid()
    for n in range(30):
        chosen = sorted(range(8), key=lambda i: -(s[n, i] + bias[i]).item())[:3]
        assert idx[n].tolist() == chosen
        g = torch.stack([s[n, i] for i in chosen])
        torch.testing.assert_close(w[n], 2.5 * g / g.sum())
    # Without the bias the choice is by affinity alone, and the weights come from the same formula.
    w0, idx0 = sigmoid_router(logits, 3)
    assert torch.equal(idx0, s.topk(3, -1).indices)


def test_group_limited_routing_picks_from_the_best_groups():
    logits = torch.randn(25, 12, generator=gen(4))
    w, idx = sigmoid_router(logits, 2, n_groups=4, topk_groups=2)
    s = logits.sigmoid()
    for n in range(25):
        groups = s[n].view(4, 3)
        group_score = groups.topk(2, -1).values.sum(-1)
        best = set(group_score.topk(2).indices.tolist())
        allowed = [i for i in range(12) if i // 3 in best]
        assert idx[n].tolist() == sorted(allowed, key=lambda i: -s[n, i].item())[:2]
    assert group_limited_mask(s, 4, 4).all()  # every group allowed: plain top-k


# --- balance losses -----------------------------------------------------------------------------------

def test_switch_aux_loss_is_one_when_uniform_and_grows_with_imbalance():
    e, n = 8, 64
    uniform_probs = torch.full((n, e), 1 / e)
    uniform_idx = (torch.arange(n) % e)[:, None]  # each expert gets n / e tokens
    assert switch_aux_loss(uniform_probs, uniform_idx).item() == pytest.approx(1.0)
    values = []
    for skew in (0.0, 1.0, 3.0, 10.0):
        logits = torch.zeros(n, e)
        logits[:, 0] = skew
        probs = logits.softmax(-1)
        values.append(switch_aux_loss(probs, probs.topk(1, -1).indices if skew else uniform_idx).item())
    assert values == sorted(values) and values[-1] > 7  # all tokens on one expert: close to E


def test_sequence_balance_loss_is_one_when_uniform():
    idx = (torch.arange(32) % 8)[:, None]
    assert sequence_balance_loss(torch.full((32, 8), 0.3), idx, 4).item() == pytest.approx(1.0)
    skewed = torch.zeros(32, 1, dtype=torch.long)
    scores = torch.rand(32, 8, generator=gen())
    scores[:, 0] += 1.0  # expert 0 scores highest and gets every token
    assert sequence_balance_loss(scores, skewed, 4).item() > 1


def test_z_loss_is_the_squared_logsumexp():
    logits = torch.randn(5, 4, generator=gen())
    torch.testing.assert_close(z_loss(logits), (logits.exp().sum(-1).log() ** 2).mean())


def test_router_gets_gradient_from_the_aux_loss_and_the_gates_but_none_through_the_bias():
    layer = MoELayer(CFG.with_(aux_loss_coef=0.01))
    x = torch.randn(2, 5, CFG.d_model, generator=gen())
    _, aux = layer(x)
    aux["loss"].backward()
    assert layer.router.weight.grad.abs().sum() > 0  # from the aux loss alone
    layer.zero_grad()
    y, _ = layer(x)
    y.sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0  # through the gate weights
    v3 = MoELayer(CFG.with_(router="sigmoid", bias_update_rate=0.001))
    assert "router.bias" not in dict(v3.named_parameters()) and not v3.router.bias.requires_grad
    y1, _ = v3(x)
    v3.router.bias.add_(5.0)  # the same shift for every expert: same choice, and the weights ignore b
    y2, _ = v3(x)
    torch.testing.assert_close(y1, y2)


def test_bias_update_has_the_right_sign():
    bias = torch.zeros(4)
    new = bias_update(bias, torch.tensor([10.0, 2.0, 4.0, 0.0]), gamma=0.001)  # mean load 4
    assert new.tolist() == pytest.approx([-0.001, 0.001, 0.0, 0.001])


def test_trainer_applies_the_bias_update_after_each_step():
    from minimoe.train import SampleBatches
    from minimoe.data import Mixture

    cfg = CFG.with_(router="sigmoid", bias_update_rate=0.01, vocab_size=100)
    model = build_model(cfg)
    mix = Mixture(seed=0)
    trainer = Trainer(model, SampleBatches(mix.sample(16, "train"), batch_size=4, pack=False), TrainConfig(steps=2, warmup=1),
                      progress=False)
    records = trainer.fit()
    bias = model.blocks[0].ffn.router.bias
    assert bias.abs().max().item() == pytest.approx(0.02) or bias.abs().max().item() == pytest.approx(0.01)
    assert "ffn/max_load" in records[-1] and "ffn/router_entropy" in records[-1]
    model.eval()  # evaluation never moves the bias
    before = bias.clone()
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    model.blocks[0].ffn.after_optimizer_step()
    assert torch.equal(bias, before)


# --- capacity -----------------------------------------------------------------------------------------

def test_dropped_counts_match_a_queue_written_out():
    idx = torch.randint(0, 4, (30, 2), generator=gen(5))
    idx[:, 1] = (idx[:, 0] + 1 + torch.randint(0, 3, (30,), generator=gen(6))) % 4  # distinct per row
    for factor in (0.25, 0.5, 1.0, 1.25):
        cap = expert_capacity(30, 4, 2, factor)
        keep = capacity_keep(idx, 4, cap)
        queue = [0] * 4
        want = torch.zeros(30, 2, dtype=torch.bool)
        for slot in range(2):
            for n in range(30):
                e = idx[n, slot].item()
                queue[e] += 1
                want[n, slot] = queue[e] <= cap
        assert torch.equal(keep, want)
        assert expert_counts(idx, 4, keep).max().item() <= cap


def test_a_large_capacity_is_exactly_dropless_and_a_dropped_token_keeps_only_the_residual():
    x = torch.randn(3, 7, CFG.d_model, generator=gen())
    dropless = MoELayer(CFG)
    big = MoELayer(CFG.with_(capacity_factor=CFG.n_routed_experts / CFG.top_k))
    big.load_state_dict(dropless.state_dict())
    y0, a0 = dropless(x)
    y1, a1 = big(x)
    assert torch.equal(y0, y1) and a1["dropped"].item() == 0
    tight = MoELayer(CFG.with_(n_shared_experts=0, capacity_factor=0.1))
    y2, a2 = tight(x)
    n = 3 * 7
    assert a2["dropped"].item() == pytest.approx(1 - expert_counts(a2["topk_idx"].view(n, -1), 8,
                                                                   a2["topk_weight"].view(n, -1) != 0).sum().item() / (2 * n))
    lost = (a2["topk_weight"] == 0).all(-1)  # (B, T): tokens that lost every expert
    assert lost.any() and (y2[lost] == 0).all()  # the block adds nothing: the residual alone carries them


# --- the layer ---------------------------------------------------------------------------------------

def _per_token_reference(layer, x):
    """The MoE layer written one token at a time, from its own routing decisions."""
    flat = x.reshape(-1, x.shape[-1])
    route = layer.router(flat)
    out = []
    for n in range(flat.shape[0]):
        y = layer.shared(flat[n]) if layer.shared is not None else torch.zeros_like(flat[n])
        for j in range(route.topk_idx.shape[1]):
            y = y + route.topk_weight[n, j] * layer.experts.expert(route.topk_idx[n, j].item(), flat[n])
        out.append(y)
    return torch.stack(out).view_as(x)


def _backends():
    """Every dispatch backend this machine runs natively (Triton only on a CUDA GPU; chapter 06 tests
    its CPU interpreter itself)."""
    backends = getattr(minimoe.dispatch, "BACKENDS", None) or minimoe.dispatch.reference.BACKENDS
    return [b for b in backends if b != "triton" or torch.cuda.is_available()]


@pytest.mark.parametrize("cfg", [CFG, CFG.with_(router="sigmoid", routed_scaling=2.5, n_expert_groups=4, topk_groups=2),
                                 CFG.with_(router_renormalize=False, top_k=1, n_shared_experts=0)],
                         ids=["softmax", "v3-grouped", "switch"])
def test_every_dispatch_path_gives_the_per_token_result(cfg):
    layer = MoELayer(cfg)
    x = torch.randn(2, 9, cfg.d_model, generator=gen(7))
    want = _per_token_reference(layer, x)
    for backend in _backends():
        layer.backend = backend
        y, _ = layer(x)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"backend {backend}: {m}")


def test_an_expert_with_no_tokens_works_forward_and_backward():
    layer = MoELayer(CFG)
    with torch.no_grad():
        layer.router.weight[0] = -10 * layer.router.weight.new_ones(CFG.d_model)  # expert 0 scores far below
    x = torch.rand(2, 6, CFG.d_model, generator=gen())  # positive inputs: logit of expert 0 very negative
    y, aux = layer(x)
    assert not (aux["topk_idx"] == 0).any()
    y.sum().backward()
    g = layer.experts.w_gate.weight.grad
    assert torch.isfinite(g).all() and g[0].abs().sum() == 0 and g[1:].abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_load_spread_shrinks_with_balancing_on_a_skewed_input(seed):
    x = torch.randn(256, CFG.d_model, generator=gen(8)) + 2.0 * torch.randn(CFG.d_model, generator=gen(9))
    spread = {}
    for name, cfg in {"none": CFG, "aux": CFG.with_(aux_loss_coef=1.0)}.items():
        torch.manual_seed(seed)  # the same experts and router for both
        layer = MoELayer(cfg)
        with torch.no_grad():  # a skewed start: experts 0 and 1 favoured by the shared direction
            layer.router.weight[:2] += 0.5 * x.mean(0) / x.mean(0).norm()
        opt = torch.optim.Adam(layer.router.parameters(), lr=0.05)
        for _ in range(120):
            _, aux = layer(x[None])
            if "loss" in aux:
                opt.zero_grad()
                aux["loss"].backward()
                opt.step()
        spread[name] = layer(x[None])[1]["max_load"].item()
    torch.manual_seed(seed)
    layer = MoELayer(CFG.with_(router="sigmoid", bias_update_rate=0.02))
    with torch.no_grad():
        layer.router.weight[:2] += 0.5 * x.mean(0) / x.mean(0).norm()
    first = layer(x[None])[1]["max_load"].item()
    for _ in range(40):
        layer(x[None])
        layer.after_optimizer_step()
    spread["bias"] = layer(x[None])[1]["max_load"].item()
    assert spread["aux"] < spread["none"], spread
    assert spread["bias"] < first, (spread, first)


def test_stats_are_logged_per_layer_and_the_loss_adds_up():
    model = build_model(CFG.with_(aux_loss_coef=0.01, z_loss_coef=0.001, seq_aux_coef=0.0001, n_layers=3,
                                  n_dense_layers=1))
    tokens = torch.randint(0, CFG.vocab_size, (2, 8), generator=gen())
    out = model(tokens, targets=tokens)
    moe_aux = [a for a in out.aux if a]
    assert len(moe_aux) == 2
    torch.testing.assert_close(out.aux_loss, sum(a["loss"] for a in moe_aux))
    want = 0.01 * moe_aux[0]["balance_loss"] + 0.001 * moe_aux[0]["z_loss"] + 0.0001 * moe_aux[0]["seq_balance_loss"]
    torch.testing.assert_close(moe_aux[0]["loss"].detach(), want)
    stats = layer_stats(out.aux)
    assert {"ffn/max_load", "ffn/min_load", "ffn/router_entropy", "ffn/dropped", "ffn/load_cv"} <= set(stats)
    assert 0 < stats["ffn/router_entropy"] <= math.log(CFG.n_routed_experts) + 1e-6


@pytest.mark.parametrize("cfg", [preset("tiny-moe"), preset("tiny-moe-v3"), CFG, CFG.with_(n_dense_layers=1),
                                 CFG.with_(n_shared_experts=2, tie_embeddings=True), CFG.with_(n_shared_experts=0)],
                         ids=["tiny-moe", "tiny-moe-v3", "small", "dense-first", "2-shared-tied", "no-shared"])
def test_parameter_count_equals_the_recipe_for_moe(cfg):
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == recipe.count_params(cfg).total


def test_tiny_moe_activates_what_tiny_does():
    dense, moe = recipe.count_params("tiny"), recipe.count_params("tiny-moe")
    assert moe.activated - dense.activated == moe.router  # the same widths; only the router is extra
    assert moe.total > 2.5 * dense.total


def test_config_checks_the_routing_settings():
    for bad in (dict(router="relu"), dict(routed_scaling=0.0), dict(aux_loss_coef=-1.0), dict(capacity_factor=-0.5),
                dict(n_expert_groups=3, topk_groups=1), dict(n_expert_groups=4, topk_groups=5),
                dict(topk_groups=2), dict(n_expert_groups=4, topk_groups=1, top_k=3)):
        with pytest.raises(ValueError, match=next(iter(bad)) if "top_k" not in bad else "top_k"):
            CFG.with_(**bad)
    with pytest.raises(TypeError):
        CFG.with_(router_renormalize=1)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="k:"):
        softmax_router(torch.randn(3, 4), 5)
    with pytest.raises(ValueError, match="logits"):
        sigmoid_router(torch.randn(3), 1)
    with pytest.raises(ValueError, match="x:"):
        MoELayer(CFG)(torch.randn(3, CFG.d_model))
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(10, 4, 2, -1.0)


# --- looking at routing, and the shipped chapter-05 checkpoints ----------------------------------------

def test_route_tokens_recomputes_the_layers_own_choice_and_accepts_another_k():
    from minimoe.data import Mixture
    from minimoe.moe.viz import domain_expert_matrix, route_tokens, sample_tokens

    model = build_model(CFG.with_(vocab_size=100, n_layers=2, n_dense_layers=1, max_seq_len=256)).eval()
    sample = Mixture(seed=0).sample(1, "val")[0]
    tokens, text = sample_tokens(sample)
    assert len(text) == len(tokens)
    with torch.no_grad():
        aux = model(tokens[None]).aux[1]
    idx, weight = route_tokens(model, tokens)[1]
    assert torch.equal(idx, aux["topk_idx"][0])
    torch.testing.assert_close(weight, aux["topk_weight"][0])
    idx4, _ = route_tokens(model, tokens, k=4)[1]
    assert idx4.shape == (len(tokens), 4) and torch.equal(idx4[:, :2].sort(-1).values, idx.sort(-1).values)
    matrix = domain_expert_matrix(model, Mixture(seed=0).sample(18, "val"))
    used = matrix.sum(1) > 0
    torch.testing.assert_close(matrix[used].sum(1), torch.ones(int(used.sum())))


@pytest.mark.parametrize("name", ["dense-200", "moe-none", "moe-aux", "moe-v3"])
def test_chapter_05_runs_load_with_their_curves(name):
    from minimoe.course import training_run

    cfg, info = training_run(name)
    rows = info["extra"]["metrics"]
    assert len(rows) == info["step"] and "val_ce" in rows[-1] and "elapsed_s" in rows[-1]
    if cfg.is_moe:
        assert "ffn/max_load" in rows[-1] and info["extra"]["load_history"]


def test_shipped_checkpoints_stay_small():
    from pathlib import Path

    from minimoe.course import BAKED, baked

    folder = Path(__file__).resolve().parent.parent / "minimoe" / "checkpoints"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix in (".pt", ".json")}
    assert all(size <= 5_000_000 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 20_000_000, sizes
    for name in BAKED:
        if (folder / f"{name}.pt").exists():
            model, info = baked(name)
            assert sum(p.numel() for p in model.parameters()) == recipe.count_params(model.cfg).total


# --- what the statistics and losses can and cannot say (chapter 05's corrected claims) ------------------

@pytest.mark.parametrize("e, k", [(16, 3), (8, 2), (4, 4), (6, 1)])
def test_max_load_is_at_most_e_over_k_and_collapse_reaches_it(e, k):
    n = 30
    uniform, g = torch.full((n, e), 1.0 / e), gen()
    for _ in range(20):
        idx = torch.rand(n, e, generator=g).topk(k, -1).indices
        assert load_stats(expert_counts(idx, e), uniform)["max_load"] <= e / k + 1e-6
    collapsed = torch.arange(k).repeat(n, 1)  # the same k experts for every token
    assert float(load_stats(expert_counts(collapsed, e), uniform)["max_load"]) == pytest.approx(e / k)


def test_the_switch_loss_can_fall_below_one_with_an_uneven_load():
    probs = torch.tensor([[0.51, 0.49], [0.51, 0.49], [0.01, 0.99]])
    idx = probs.argmax(-1, keepdim=True)  # experts 0, 0, 1: uneven
    assert float(switch_aux_loss(probs, idx)) == pytest.approx(0.8956, abs=1e-4)
    assert float(switch_aux_loss(torch.tensor([[0.0, 1.0]] * 3), idx)) == pytest.approx(2 / 3)  # E · min f
    logits = probs.log().requires_grad_(True)
    switch_aux_loss(logits.softmax(-1), idx).backward()
    assert (logits.grad[:, 0] > 0).all()  # descent moves probability off the overloaded expert 0


def test_the_z_loss_does_not_see_the_load():
    logits = torch.randn(64, 8, generator=gen())
    assert torch.equal(logits.topk(2, -1).indices, (logits / 10).topk(2, -1).indices)
    assert z_loss(logits / 10) < z_loss(logits)
    collapsed = torch.zeros(64, 8)
    collapsed[:, 0] = 1.0
    assert z_loss(collapsed) < z_loss(4 * logits)  # a collapsed router can score better than a spread one
