"""Packed training batches and the token mask: a packed batch computes what the padded one does,
and PAD changes nothing a real token, a router statistic, a balance loss or a bias step sees."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from minimoe.config import preset
from minimoe.data import PAD, Mixture, collate
from minimoe.data.packing import PackedSamples, first_fit, pack
from minimoe.model import build_model
from minimoe.moe import MoELayer

SAMPLES = Mixture(seed=0).sample(60, "train")

MODELS = {
    "dense mha": preset("tiny"),
    "dense gqa": preset("tiny").with_(attention="gqa", n_kv_heads=2),
    "moe mha": preset("tiny-moe"),
    "moe mla": preset("tiny-moe").with_(attention="mla", kv_lora_rank=32, qk_rope_head_dim=16,
                                        qk_nope_head_dim=16, v_head_dim=32),
    "moe v3 (sigmoid, bias, seq loss, z-loss)": preset("tiny-moe-v3").with_(seq_aux_coef=1e-2, z_loss_coef=1e-3),
}


def per_sample(batch, logits):
    """Each sample's logits (its positions, in order), from a padded or a packed batch."""
    out = []
    if batch.segments is None:
        for b in range(batch.inputs.shape[0]):
            out.append(logits[b][batch.token_mask[b]])
        return out
    for b in range(batch.inputs.shape[0]):
        seg = batch.segments[b]
        for j in range(int(seg.max()) + 1):
            out.append(logits[b][seg == j])
    return out


def packed_order(batch):
    """Which sample (by its first position's tokens) each packed segment is: rebuild the ids."""
    ids = []
    for b in range(batch.inputs.shape[0]):
        seg = batch.segments[b]
        for j in range(int(seg.max()) + 1):
            ids.append(tuple(batch.inputs[b][seg == j].tolist()))
    return ids


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_batch_computes_what_the_padded_batch_computes(name):
    torch.manual_seed(0)
    model = build_model(MODELS[name], seed=3).eval()
    padded, packed = collate(SAMPLES), pack(SAMPLES, 256)
    assert packed.inputs.shape[0] < padded.inputs.shape[0] // 5  # many samples per row
    assert packed.pad_fraction < 0.2 < 0.5 < padded.pad_fraction  # the last row is part-filled
    with torch.no_grad():
        out_pad = model(**padded.model_inputs())
        out_pack = model(**packed.model_inputs())
    torch.testing.assert_close(out_pack.ce, out_pad.ce, rtol=1e-5, atol=1e-6)
    # Every real token's logits, sample by sample (packing may reorder the samples: match by tokens).
    pad_by_ids = {tuple(padded.inputs[b][padded.token_mask[b]].tolist()): lg
                  for b, lg in enumerate(per_sample(padded, out_pad.logits))}
    for ids, lg in zip(packed_order(packed), per_sample(packed, out_pack.logits)):
        torch.testing.assert_close(lg, pad_by_ids[ids], rtol=1e-4, atol=1e-5)


def test_packing_restarts_positions_and_confines_attention():
    from minimoe.model.attention import attention_mask
    from minimoe.model.transformer import sample_positions

    seg = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]])
    assert sample_positions(seg, None).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    mask = attention_mask(seg, seg >= 0)[0, 0]  # (T, T)
    assert mask[4].tolist() == [False, False, False, True, True, False, False, False]  # own sample, causal
    assert mask[5].tolist() == [False] * 5 + [True, False, False]
    assert mask[7].tolist() == [False] * 7 + [True]  # PAD sees only itself: no empty softmax row
    assert not mask[:6, 6:].any()  # no real token sees PAD


def test_pack_keeps_every_sample_whole_and_scores_like_collate():
    batch = pack(SAMPLES, 200, score="answer")
    assert sorted(packed_order(batch)) == sorted(tuple(collate([s]).inputs[0].tolist()) for s in SAMPLES)
    assert batch.scored == collate(SAMPLES).scored
    assert pack(SAMPLES, 200, score="all").scored == collate(SAMPLES, score="all").scored
    assert (batch.inputs[~batch.token_mask] == PAD).all() and not batch.loss_mask[~batch.token_mask].any()
    # targets never cross into the next sample: the last target of each sample is its EOS
    from minimoe.data import EOS
    seg = batch.segments
    last = (seg[:, :-1] != seg[:, 1:]) & (seg[:, :-1] >= 0)
    assert (batch.targets[:, :-1][last] == EOS).all()


def test_a_sample_longer_than_the_row_is_a_clear_error():
    longest = max(SAMPLES, key=len)
    with pytest.raises(ValueError, match=r"length: got 20.*needs \d+ positions"):
        pack(SAMPLES, 20)
    with pytest.raises(ValueError, match="length"):
        PackedSamples([longest], len(longest) - 2)
    pack([longest], len(longest) - 1)  # exactly fits: L tokens take L - 1 positions


def test_first_fit_fills_rows_and_respects_capacity():
    sizes = [5, 9, 3, 7, 1, 10, 2, 8]
    rows = first_fit(sizes, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 5  # 45 units in rows of 10: first-fit needs 5 here
    with pytest.raises(ValueError, match="size 11"):
        first_fit([11], 10)


def test_packed_stream_is_a_pure_function_of_seed_and_uses_each_sample_once_per_epoch():
    train = Mixture(seed=1).sample(400, "train")
    a, b = PackedSamples(train, 192, seed=5), PackedSamples(train, 192, seed=5)
    assert torch.equal(a.rows(37, 4).inputs, b.rows(37, 4).inputs)
    assert not torch.equal(a.rows(0, 4).inputs, PackedSamples(train, 192, seed=6).rows(0, 4).inputs)
    epoch = a.epoch(0)
    assert sorted(i for r in epoch for i in r) == list(range(len(train)))
    assert a.fill() > 0.95
    assert sorted(i for r in a.epoch(1) for i in r) == list(range(len(train)))
    assert a.epoch(1) != epoch  # a fresh shuffle each epoch


def test_packing_quarters_the_padding_of_the_chapter_02_mixture():
    """The review's measurement: batch 32, seed 0, 3,200 training samples, padded per batch."""
    from minimoe.data import iterate_batches

    train = Mixture(seed=0).sample(3200, "train")
    padded = list(iterate_batches(train, 32, seed=0))
    pad_share = sum(b.inputs.numel() - b.real_tokens for b in padded) / sum(b.inputs.numel() for b in padded)
    packed = PackedSamples(train, 256)
    assert pad_share > 0.6  # most of a padded batch is PAD ...
    assert 1 - packed.fill() < 0.03  # ... and almost none of a packed one


# --- the token mask through the MoE layer ------------------------------------------------------------

def _moe_cfg(**kw):
    return preset("tiny-moe-v3").with_(seq_aux_coef=1e-2, z_loss_coef=1e-3, aux_loss_coef=1e-2, **kw)


@pytest.mark.parametrize("where", ["right", "left", "middle"])
def test_pad_columns_change_no_statistic_loss_bias_step_or_real_output(where):
    torch.manual_seed(0)
    cfg = _moe_cfg()
    layer_a, layer_b = MoELayer(cfg), MoELayer(cfg)
    layer_b.load_state_dict(layer_a.state_dict())
    b, t, p = 3, 10, 5
    x = torch.randn(b, t, cfg.d_model)
    pad = torch.randn(b, p, cfg.d_model) * 10  # PAD activations: anything at all
    cut = {"right": t, "left": 0, "middle": 4}[where]
    x_pad = torch.cat([x[:, :cut], pad, x[:, cut:]], dim=1)
    real = torch.ones(b, t + p, dtype=torch.bool)
    real[:, cut:cut + p] = False
    layer_a.train(), layer_b.train()
    y_a, aux_a = layer_a(x, token_mask=torch.ones(b, t, dtype=torch.bool))
    y_b, aux_b = layer_b(x_pad, token_mask=real)
    torch.testing.assert_close(y_b[real].view(b, t, -1), y_a, rtol=1e-5, atol=1e-6)
    for key in ("load", "max_load", "min_load", "load_cv", "router_entropy", "balance_loss", "z_loss",
                "seq_balance_loss", "loss", "dropped"):
        torch.testing.assert_close(aux_b[key], aux_a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert (aux_b["topk_idx"][~real] == -1).all()
    torch.testing.assert_close(aux_b["topk_idx"][real].view(b, t, -1), aux_a["topk_idx"])
    layer_a.after_optimizer_step(), layer_b.after_optimizer_step()
    assert torch.equal(layer_a.router.bias, layer_b.router.bias)
    assert layer_a.router.bias.abs().sum() > 0  # the step did move the bias


def test_pad_is_dispatched_nowhere_and_counted_nowhere():
    torch.manual_seed(1)
    cfg = _moe_cfg(capacity_factor=1.0)
    layer = MoELayer(cfg)
    x = torch.randn(2, 12, cfg.d_model)
    real = torch.zeros(2, 12, dtype=torch.bool)
    real[:, :7] = True
    _, aux = layer(x, token_mask=real)
    assert aux["load"].sum().item() == pytest.approx(1.0)
    routed = torch.zeros(cfg.n_routed_experts)
    for e in aux["topk_idx"][real].reshape(-1).tolist():
        routed[e] += 1
    torch.testing.assert_close(aux["load"], routed / routed.sum())
    assert (aux["topk_weight"][~real] == 0).all()


def test_a_mask_of_the_wrong_shape_is_a_clear_error():
    cfg = preset("tiny-moe")
    layer, model = MoELayer(cfg), build_model(cfg)
    with pytest.raises(ValueError, match=r"token_mask: got shape \(2, 5\)"):
        layer(torch.randn(2, 6, cfg.d_model), token_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="token_mask.*bool"):
        layer(torch.randn(2, 6, cfg.d_model), token_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="segments: got shape"):
        model(torch.zeros(2, 6, dtype=torch.long), segments=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="token_mask"):
        model(torch.zeros(2, 6, dtype=torch.long), token_mask=torch.ones(3, 6, dtype=torch.bool))


def test_training_on_packed_batches_records_packing_and_dispatch(tmp_path):
    from minimoe.train import Trainer, TrainConfig, mixture_batches, read_checkpoint

    data = mixture_batches(n_train=300, n_val=16, batch_size=4, seq_len=192, seed=0)
    model = build_model("tiny-moe", seed=0)
    trainer = Trainer(model, data, TrainConfig(steps=3, warmup=1, eval_every=3, checkpoint_every=3),
                      out_dir=tmp_path, progress=False)
    metrics = trainer.fit()
    assert all(m["real_tokens"] > 0.9 * m["positions"] for m in metrics)
    obj = read_checkpoint(tmp_path)
    assert obj["data"]["packed"] is True and obj["data"]["seq_len"] == 192
    assert obj["extra"]["dispatch"] == "auto"
    assert {m.backend for m in model.modules() if isinstance(m, MoELayer)} == {"auto"}


def test_cli_rejects_an_unknown_dispatch(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny-moe", "--steps", "2",
                           "--out", str(tmp_path / "x"), "--dispatch", "cuda-magic"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--dispatch" in proc.stderr and "cuda-magic" in proc.stderr
    assert not (tmp_path / "x").exists()
