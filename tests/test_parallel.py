"""Expert parallelism on real gloo processes: the same numbers as one process, bytes as predicted,
training that resumes bit for bit, and torchrun."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minimoe.parallel import (DistributedError, all_to_all, call_on_ranks, compare_with_one_process, exchange_plan,
                              launch, limit_ranks)

TOL = 1e-5  # fp32; the only differences are summation order


def _gaps(results):
    return [max(r["out"], r["dx"], r["dweight"], r["dexperts"]) for r in results]


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_one_process(world):
    results = launch(compare_with_one_process, world, (8, 16, 24, 2, 12, 0))
    assert max(_gaps(results)) < TOL
    # bytes measured from the tensors handed to all_to_all_single, predicted from the routing alone
    assert all(r["bytes_sent"] == r["bytes_predicted"] > 0 for r in results)
    assert all(r["bytes_sent_backward"] == r["bytes_predicted_backward"] > 0 for r in results)
    for rank, r in enumerate(results):  # what left for rank t is what rank t's plan says it received
        assert r["bytes_sent"] + r["bytes_sent_backward"] == sum(b for t, b in enumerate(r["bytes_to"]) if t != rank)


def test_a_rank_that_receives_no_tokens():
    results = launch(compare_with_one_process, 4, (8, 16, 24, 2, 10, 1, None, 2))
    assert max(_gaps(results)) < TOL
    assert results[2]["rows_received"] == [0, 0, 0, 0]


def test_node_limited_routing_sends_fewer_bytes():
    free = launch(compare_with_one_process, 4, (16, 16, 24, 4, 16, 2))
    limited = launch(compare_with_one_process, 4, (16, 16, 24, 4, 16, 2, 1))
    assert max(_gaps(limited)) < TOL
    assert sum(r["bytes_sent"] for r in limited) < 0.7 * sum(r["bytes_sent"] for r in free)


def test_a_failing_rank_ends_the_run_with_a_clear_error():
    start = time.monotonic()
    with pytest.raises(DistributedError, match="rank 1 failed first: RuntimeError: rank 1 failed on purpose"):
        launch(compare_with_one_process, 2, (8, 16, 24, 2, 12, 0, None, None, 1), timeout_s=30, start_method="spawn")
    assert time.monotonic() - start < 60


def test_exchange_plan_sends_each_token_once_per_rank():
    topk = torch.tensor([[0, 1], [2, 7], [6, 7], [3, 3]])  # 8 experts on 4 ranks: 2 each
    token, rank, counts = exchange_plan(topk, 8, 4)
    assert counts.tolist() == [1, 2, 0, 2]  # token 0 -> rank 0 once although both its experts live there
    assert list(zip(token.tolist(), rank.tolist())) == [(0, 0), (1, 1), (3, 1), (1, 3), (2, 3)]


def test_limit_ranks_confines_each_token():
    scores = torch.randn(50, 16)
    idx, w = limit_ranks(scores, k=4, world=4, max_ranks=2)
    assert all(len(set(row.tolist())) <= 2 for row in idx // 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(50))
    with pytest.raises(ValueError, match="max_ranks"):
        limit_ranks(scores, 4, 4, 5)
    with pytest.raises(ValueError, match="k"):
        limit_ranks(scores, 9, 4, 2)


# --- the balance losses under expert parallelism equal one process's ------------------------------

def _aux_cfg():
    from minimoe.config import preset

    # every balance loss on, with large weights, so that an error would show
    return preset("tiny-moe-aux").with_(aux_loss_coef=0.5, z_loss_coef=0.1, seq_aux_coef=0.5)


def _moe_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 128, generator=g)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 2:] = False  # rank 1's rows hold fewer real tokens than rank 0's
    mask[3, 1:] = False
    return x, mask


def _router_loss_and_grad(layer, x, mask):
    _, aux = layer(x, token_mask=mask)
    layer.router.zero_grad()
    aux["loss"].backward()
    return float(aux["loss"].detach()), layer.router.weight.grad.clone()


def _layer():
    from minimoe.moe import MoELayer

    torch.manual_seed(0)
    return MoELayer(_aux_cfg())


def _share_of_balance_loss(rank, share):
    from minimoe.parallel import _SumOverRanks

    layer = _layer()
    x, mask = _moe_batch()
    if share:
        layer.sum_over_shares = _SumOverRanks()
    return _router_loss_and_grad(layer, x[rank::2], mask[rank::2])


def test_balance_losses_of_the_shares_sum_to_the_one_process_loss():
    x, mask = _moe_batch()
    want_loss, want_grad = _router_loss_and_grad(_layer(), x, mask)
    shares = call_on_ranks(_share_of_balance_loss, 2, [(0, True), (1, True)])
    assert sum(loss for loss, _ in shares) == pytest.approx(want_loss, rel=1e-6)
    torch.testing.assert_close(shares[0][1] + shares[1][1], want_grad, rtol=1e-5, atol=1e-7)
    # what the old rule (each rank's own loss, divided by the world) gives is measurably different
    alone = [_share_of_balance_loss(r, False)[0] for r in range(2)]
    assert abs(sum(alone) / 2 - want_loss) > 1e-3


# --- training ------------------------------------------------------------------------------------

def _one_process_losses(preset_name, steps, batch_size, n_train, warmup):
    from minimoe.model import build_model
    from minimoe.train import Trainer, TrainConfig, mixture_batches

    trainer = Trainer(build_model(preset_name, seed=0), mixture_batches(n_train=n_train, n_val=0,
                                                                        batch_size=batch_size, seed=0),
                      TrainConfig(steps=steps, lr=3e-3, min_lr=3e-4, warmup=warmup), progress=False)
    return [m["loss"] for m in trainer.fit()]


@pytest.fixture(scope="module")
def v3_run():
    """tiny-moe-v3 (its balancing bias is state to carry over) on 2 ranks, 4 steps, never stopped."""
    from minimoe.parallel import train_worker

    return launch(train_worker, 2, ("tiny-moe-v3", 4, 4, 0, 3e-3, 100))


@pytest.mark.parametrize("preset_name", ["tiny-moe-aux", "tiny-moe-v3"])
def test_expert_parallel_training_matches_one_process(preset_name, v3_run):
    from minimoe.parallel import train_worker

    ep = v3_run if preset_name == "tiny-moe-v3" else launch(train_worker, 2, (preset_name, 4, 4, 0, 3e-3, 100))
    assert ep[0] == ep[1]  # every rank reports the same global loss
    assert ep[0]["start"] == 0 and len(ep[0]["losses"]) == 4
    assert ep[0]["losses"] == pytest.approx(_one_process_losses(preset_name, 4, 4, 100, 4), abs=1e-4)


def test_expert_parallel_training_resumes_bit_for_bit(tmp_path, v3_run):
    from minimoe.model import build_model
    from minimoe.parallel import train_worker
    from minimoe.train import Trainer, TrainConfig, load_model, mixture_batches

    out = str(tmp_path / "ep")
    os.makedirs(out)
    args = ("tiny-moe-v3", 4, 4, 0, 3e-3, 100, out, "auto", 10, 2)
    crashed = launch(train_worker, 2, args + (3,))  # checkpoint at step 2, then stops after step 3 unsaved
    assert crashed[0]["losses"] == v3_run[0]["losses"][:3]
    resumed = launch(train_worker, 2, args)
    assert resumed[0]["start"] == 2
    assert resumed[0]["losses"] == v3_run[0]["losses"][2:]  # bit for bit, optimizer state and bias included
    records = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert [r["loss"] for r in records] == v3_run[0]["losses"]

    # One ordinary checkpoint: `minimoe generate` loads it, and one process can train on from it.
    model, info = load_model(out)
    assert info["step"] == 4 and info["extra"]["expert_parallel"] == 2
    assert model.blocks[-1].ffn.experts.w_gate.weight.shape[0] == model.cfg.n_routed_experts
    one = Trainer(build_model("tiny-moe-v3", seed=5), mixture_batches(n_train=100, n_val=0, batch_size=4, seed=0),
                  TrainConfig(steps=4, lr=3e-3, min_lr=3e-4, warmup=4), out_dir=out, progress=False)
    assert one.resume() == 4
    assert len(one.optimizer.state) == len(list(model.parameters()))  # every expert's AdamW moments came along
    bias = [m.router.bias for m in model.modules() if hasattr(m, "router") and hasattr(m.router, "bias")]
    assert bias and all(b.abs().sum() > 0 for b in bias)  # the balancing bias moved and was saved


def test_torchrun_standalone_matches_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    out = tmp_path / "tr"
    proc = subprocess.run(launcher + ["--standalone", "--nproc-per-node", "2", "-m", "minimoe.parallel",
                                      "--preset", "tiny-moe-aux", "--steps", "3", "--batch-size", "4",
                                      "--samples", "100", "--warmup", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: loss" in proc.stdout
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(_one_process_losses("tiny-moe-aux", 3, 4, 100, 3), abs=1e-4)


def test_cli_trains_expert_parallel_and_resumes(tmp_path):
    from minimoe.train import load_model

    out = tmp_path / "ep"

    def train(*extra):
        return subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny-moe", "--out", str(out),
                               "--expert-parallel", "2", "--batch-size", "4", "--samples", "100", *extra],
                              capture_output=True, text=True, timeout=300)

    proc = train("--steps", "2")
    assert proc.returncode == 0, proc.stderr
    model, info = load_model(out)  # one ordinary checkpoint, experts gathered
    assert info["step"] == 2 and model.cfg.name == "tiny-moe"
    again = train("--steps", "3")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and load_model(out)[1]["step"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    bad = subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny", "--steps", "2",
                          "--out", str(tmp_path / "x"), "--expert-parallel", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no experts" in bad.stderr
    other = subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny-moe-aux", "--steps", "2",
                            "--out", str(out), "--expert-parallel", "2"], capture_output=True, text=True)
    assert other.returncode == 2 and "not of preset" in other.stderr
    mixed = subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny-moe", "--steps", "2",
                            "--out", str(tmp_path / "y"), "--expert-parallel", "2", "--mix", "add_cot=1"],
                           capture_output=True, text=True)
    assert mixed.returncode == 2 and "--mix" in mixed.stderr


# --- functions defined outside a module, on forked ranks ------------------------------------------

def test_call_on_ranks_runs_a_local_function_forward_and_backward():
    def exchange(x, recv, send):  # a closure: spawned processes could not import it
        return all_to_all(x, recv, send)

    x0, x1 = torch.arange(10.0).view(5, 2), torch.arange(100.0, 106.0).view(3, 2)
    args = [(x0, [3, 1], [3, 2], torch.ones(4, 2)), (x1, [2, 2], [1, 2], torch.full((4, 2), 2.0))]
    r0, r1 = call_on_ranks(exchange, 2, args, driver="forward_backward")
    torch.testing.assert_close(r0["y"], torch.cat([x0[:3], x1[:1]]), rtol=0, atol=0)
    torch.testing.assert_close(r1["y"], torch.cat([x0[3:], x1[1:]]), rtol=0, atol=0)
    # each row's gradient comes back from the rank it went to
    torch.testing.assert_close(r0["dx"], torch.tensor([[1.0] * 2] * 3 + [[2.0] * 2] * 2), rtol=0, atol=0)
    torch.testing.assert_close(r1["dx"], torch.tensor([[1.0] * 2] + [[2.0] * 2] * 2), rtol=0, atol=0)


def _fails_on_rank_one(rank):
    if rank == 1:
        raise ValueError("rank one says no")
    torch.distributed.barrier()
    return rank


def _not_written(rank):
    raise NotImplementedError("replace this line with your solution")


def _hangs_on_rank_one(rank):
    if rank == 1:
        time.sleep(600)
    torch.distributed.barrier()


def test_call_on_ranks_reports_failures_and_hangs():
    assert call_on_ranks(lambda r: r * 10, 2, [(0,), (1,)]) == [0, 10]
    with pytest.raises(DistributedError, match="rank 1 failed first: ValueError: rank one says no"):
        call_on_ranks(_fails_on_rank_one, 2, [(0,), (1,)], timeout_s=30)
    with pytest.raises(NotImplementedError):
        call_on_ranks(_not_written, 2, [(0,), (1,)], timeout_s=30)
    start = time.monotonic()
    with pytest.raises(DistributedError):
        call_on_ranks(_hangs_on_rank_one, 2, [(0,), (1,)], timeout_s=20)
    assert time.monotonic() - start < 120
    with pytest.raises(ValueError, match="args_per_rank"):
        call_on_ranks(_not_written, 2, [(0,)])
    with pytest.raises(ValueError, match="driver"):
        call_on_ranks(_not_written, 2, [(0,), (1,)], driver="nope")


def test_exchange_reference_is_what_the_package_all_to_all_delivers():
    from minimoe.parallel import exchange_reference

    g = torch.Generator().manual_seed(0)
    send = [[2, 0, 1], [1, 3, 0], [0, 0, 0]]  # rank 2 sends nothing, rank 0 sends rank 1 nothing
    recv = [[send[s][r] for s in range(3)] for r in range(3)]
    xs = [torch.randn(sum(row), 4, generator=g) for row in send]
    ys = exchange_reference(xs, send)
    grads = [torch.randn(y.shape, generator=g) for y in ys]
    ranks = call_on_ranks(all_to_all, 3, [(xs[r], recv[r], send[r], grads[r]) for r in range(3)],
                          driver="forward_backward")
    for r, res in enumerate(ranks):
        assert torch.equal(res["y"], ys[r])
        assert torch.equal(res["dx"], exchange_reference(grads, recv)[r])
    with pytest.raises(ValueError, match="send_splits"):
        exchange_reference(xs, [[2, 0, 1], [1, 3, 0]])
    with pytest.raises(ValueError, match=r"send_splits\[1\]"):
        exchange_reference(xs, [[2, 0, 1], [1, 1, 0], [0, 0, 0]])
