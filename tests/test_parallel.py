"""Expert parallelism on real gloo processes: the same numbers as one process, bytes as predicted."""

import time

import pytest
import torch

from minimoe.parallel import DistributedError, compare_with_one_process, exchange_plan, launch, limit_ranks

TOL = 1e-5  # fp32; the only differences are summation order


def _gaps(results):
    return [max(r["out"], r["dx"], r["dweight"], r["dexperts"]) for r in results]


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_one_process(world):
    results = launch(compare_with_one_process, world, (8, 16, 24, 2, 12, 0))
    assert max(_gaps(results)) < TOL
    assert all(r["bytes_sent"] == r["bytes_predicted"] for r in results)


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
        launch(compare_with_one_process, 2, (8, 16, 24, 2, 12, 0, None, None, 1), timeout_s=30)
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


def test_expert_parallel_training_matches_one_process():
    from minimoe.model import build_model
    from minimoe.parallel import train_worker
    from minimoe.train import Trainer, TrainConfig, mixture_batches

    ep = launch(train_worker, 2, ("tiny-moe", 3, 8, 0, 3e-3, 200))
    assert ep[0] == ep[1]  # every rank reports the same global loss
    one = Trainer(build_model("tiny-moe", seed=0), mixture_batches(n_train=200, n_val=0, batch_size=8, seed=0),
                  TrainConfig(steps=3, lr=3e-3, min_lr=3e-4, warmup=3), progress=False).fit()
    assert ep[0] == pytest.approx([m["loss"] for m in one], abs=1e-4)


def test_cli_trains_expert_parallel(tmp_path):
    import subprocess
    import sys

    from minimoe.train import load_model

    out = tmp_path / "ep"
    proc = subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny-moe", "--steps", "2",
                           "--out", str(out), "--expert-parallel", "2", "--batch-size", "4", "--samples", "100"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model, info = load_model(out)  # one ordinary checkpoint, experts gathered
    assert info["step"] == 2 and model.cfg.name == "tiny-moe"
    bad = subprocess.run([sys.executable, "-m", "minimoe.cli", "train", "--preset", "tiny", "--steps", "2",
                          "--out", str(tmp_path / "x"), "--expert-parallel", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no experts" in bad.stderr
