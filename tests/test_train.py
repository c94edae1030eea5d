"""minimoe.train: the schedule, bit-for-bit resume, NaN stops, checkpoints that fail clearly."""

import json

import pytest
import torch

from minimoe.config import ModelConfig
from minimoe.data import Mixture
from minimoe.model import build_model
from minimoe.train import (CheckpointError, SampleBatches, Trainer, TrainConfig, TrainingDiverged, load_model,
                           read_checkpoint, read_metrics, save_checkpoint)

CFG = ModelConfig(name="test", vocab_size=100, d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, max_seq_len=200)


@pytest.fixture(scope="module")
def data():
    mix = Mixture({"add_direct": 1, "reverse": 1}, seed=3)
    return SampleBatches(mix.sample(400, "train"), mix.sample(40, "val"), batch_size=8, seed=5, seq_len=64)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1e-2, min_lr=1e-3, warmup=10)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[9:], lrs[10:]))  # never rises after warm-up
    assert cfg.lr_at(100) == pytest.approx(1e-3)


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(lr=-1.0), dict(min_lr=1.0, lr=0.1), dict(grad_clip=0.0)])
def test_train_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_batches_depend_only_on_seed_and_step(data):
    a, b = data.batch(7), data.batch(7)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, data.batch(8).inputs)


def test_loss_goes_down(data):
    trainer = Trainer(build_model(CFG, seed=0), data, TrainConfig(steps=40, warmup=5, eval_every=20), progress=False)
    metrics = trainer.fit()
    assert metrics[-1]["val_ce"] < metrics[19]["val_ce"] < metrics[0]["ce"]


def test_resume_continues_bit_for_bit(tmp_path, data):
    cfg = TrainConfig(steps=12, warmup=3, eval_every=4, checkpoint_every=4)
    straight = Trainer(build_model(CFG, seed=1), data, cfg, progress=False).fit()

    first = Trainer(build_model(CFG, seed=1), data, cfg, out_dir=tmp_path, progress=False)
    first.fit(stop_after=6)  # a checkpoint at step 4, then the run dies at step 6
    assert len(read_metrics(tmp_path)) == 6
    resumed = Trainer(build_model(CFG, seed=99), data, cfg, out_dir=tmp_path, progress=False)
    assert resumed.resume() == 4  # the steps after the last checkpoint are done again
    resumed.fit()
    logged = read_metrics(tmp_path)
    assert [m["loss"] for m in logged] == [m["loss"] for m in straight]
    assert [m.get("val_ce") for m in logged] == [m.get("val_ce") for m in straight]
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_progress_bar_counts_the_steps_this_call_runs(data, monkeypatch):
    import tqdm.auto

    bars = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    trainer = Trainer(build_model(CFG), data, TrainConfig(steps=20, warmup=2, eval_every=20), progress=True)
    trainer.fit(stop_after=5)  # the schedule is 20 steps long; this call runs 5, and its bar ends full
    trainer.fit()  # the other 15
    assert [(b.total, b.n) for b in bars] == [(5, 5), (20, 20)]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, data):
    trainer = Trainer(build_model(CFG), data, TrainConfig(steps=8, warmup=1, checkpoint_every=2),
                      out_dir=tmp_path, progress=False)
    original = trainer.train_step

    def poisoned(batch):
        if trainer.step == 5:
            with torch.no_grad():
                trainer.model.head.weight.fill_(float("nan"))
        return original(batch)

    trainer.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="step 5.*last good checkpoint"):
        trainer.fit()
    good = read_checkpoint(tmp_path)
    assert good["step"] == 4
    assert all(torch.isfinite(v).all() for v in good["model"].values())


def test_checkpoint_round_trip_and_compact_weights(tmp_path):
    model = build_model(CFG, seed=2)
    save_checkpoint(tmp_path / "full.pt", model, step=3)
    save_checkpoint(tmp_path / "half.pt", model, weights_dtype=torch.float16)
    loaded, obj = load_model(tmp_path / "full.pt")
    assert obj["step"] == 3 and loaded.cfg == CFG
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    half, _ = load_model(tmp_path / "half.pt")
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    torch.testing.assert_close(half.embed.weight, model.embed.weight, rtol=1e-3, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp")), "atomic save leaves no temporary file"


def test_broken_checkpoints_give_clear_errors(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, build_model(CFG))
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    for name, message in [("truncated.pt", "corrupted or truncated"), ("garbage.pt", "corrupted or truncated"),
                          ("foreign.pt", "not a minimoe checkpoint"), ("missing.pt", "no checkpoint")]:
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / name)


def test_resume_refuses_another_config(tmp_path, data):
    Trainer(build_model(CFG), data, TrainConfig(steps=2, warmup=1), out_dir=tmp_path, progress=False).fit()
    other = Trainer(build_model(CFG.with_(d_model=48, name="other")), data, TrainConfig(steps=4),
                    out_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="another config"):
        other.resume()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_metrics_log_is_json_lines(tmp_path, data):
    Trainer(build_model(CFG), data, TrainConfig(steps=3, warmup=1, eval_every=3), out_dir=tmp_path,
            progress=False).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {"loss", "ce", "lr", "grad_norm", "tokens_per_s"} <= set(records[0]) and "val_ce" in records[2]


def test_parts_report_statistics_and_update_after_each_step(data):
    from torch import nn

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(CFG.d_model, CFG.d_model, bias=False)
            self.updates = 0

        def forward(self, x):
            return self.lin(x), {"loss": self.lin.weight.pow(2).mean() * 0, "load": torch.tensor(2.0), "hist": torch.ones(3)}

        def after_optimizer_step(self):
            self.updates += 1

    model = build_model(CFG, ffn_factory=lambda i, cfg: Counting())
    metrics = Trainer(model, data, TrainConfig(steps=3, warmup=1), progress=False).fit()
    assert [b.ffn.updates for b in model.blocks] == [3, 3]
    assert metrics[0]["ffn/load"] == 2.0 and "ffn/hist" not in metrics[0]
