"""`minimoe experiment ch05|ch10 --quick`: records with everything the notebooks plot, resume, skipping
finished runs; and the pieces the experiments added to the package (ablation, votes, roofline)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minimoe import recipe
from minimoe.config import ModelConfig, preset
from minimoe.data import DOMAINS, Mixture, collate
from minimoe.experiments import ch05, ch10, experiment, run_experiment, train_run
from minimoe.experiments.runner import batch_flops, exit_with_parent, run_folder, sample_lengths
from minimoe.generate import majority_vote, vote_accuracy
from minimoe.model import build_model
from minimoe.moe import experts_switched_off, top_experts
from minimoe.data.packing import pack


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "minimoe.cli", "experiment", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ch05_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "ch05"
    proc = cli("ch05", "--quick", "--jobs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.fixture(scope="module")
def ch10_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "ch10"
    proc = cli("ch10", "--quick", "--jobs", "2", "--out", str(out))  # two runs: the process pool path
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/record.json"))}


def test_ch05_quick_records_everything_the_notebook_plots(ch05_quick):
    out, stdout = ch05_quick
    recs = records(out)
    assert set(recs) == {f"{name}-s0" for name in ch05.MAIN_ORDER}
    for name, r in recs.items():
        assert r["seed"] == 0 and r["command"].startswith("minimoe experiment ch05 --quick")
        assert r["git_commit"] and r["machine"]["threads"] == 1 and r["model_config"]["name"]
        steps = r["train_config"]["steps"]
        assert [m["step"] for m in r["curve"]] == list(range(steps))
        for key in ("elapsed_s", "cpu_s", "tokens_seen", "flops"):
            values = [m[key] for m in r["curve"]]
            assert values == sorted(values) and values[0] > 0, key
        assert any("val_ce" in m for m in r["curve"])
        final = r["evaluations"][str(steps)]
        assert set(final["loss_by_domain"]) == set(DOMAINS) == set(final["accuracy_by_domain"])
        assert all(0 <= a <= 1 for a in final["accuracy_by_domain"].values())
        moe = r["model_config"]["n_routed_experts"]
        if not moe:
            assert r["load_history"] == [] and "matrices" not in final
            continue
        assert r["load_history"], name
        for window in r["load_history"]:
            for layer, load in window["load"].items():
                assert len(load) == moe and abs(sum(load) - 1) < 1e-3  # shares of real tokens per expert
        for layer, matrix in final["matrices"].items():
            assert len(matrix) == len(DOMAINS) and all(abs(sum(row) - 1) < 1e-3 for row in matrix)
            assert all(len(top) == r["model_config"]["top_k"] for top in final["top_experts"][layer])
        assert set(final["ablation"]) == set(DOMAINS) and len(final["control"]) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["settings"]) == set(ch05.MAIN_ORDER)
    switch = summary["settings"]["moe-switch"]
    assert len(switch["reach_dense"]) == 1 and "own_rise" in switch["specialisation"]
    assert summary["provenance"]["runs"] == len(recs)
    assert "7 to train" in stdout


def test_ch05_quick_skips_finished_runs(ch05_quick):
    out, _ = ch05_quick
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/record.json")}
    proc = cli("ch05", "--quick", "--jobs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "7 finished already (skipped), 0 to train" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/record.json")} == before


def test_ch10_quick_evaluates_at_equal_flops_and_equal_supervised_tokens(ch10_quick):
    out, _ = ch10_quick
    recs = records(out)
    assert set(recs) == {"cot-s0", "direct-s0"}
    cot, direct = recs["cot-s0"], recs["direct-s0"]
    assert direct["keep"] == [cot["train_config"]["steps"]]
    assert set(direct["evaluations"]) == {str(direct["train_config"]["steps"]), str(cot["train_config"]["steps"])}
    assert (run_folder(out, ch10.runs(True, 1)[1]) / f"weights-{cot['train_config']['steps']}.pt").exists()
    final = cot["evaluations"][str(cot["train_config"]["steps"])]
    assert final["form"] == "cot" and final["greedy"]["add1"]["n"] == 2
    vote = final["votes"]["add2"]
    assert len(vote["answers"]) == len(vote["truth"]) == 2 and all(len(a) == 4 for a in vote["answers"])
    summary = json.loads((out / "summary.json").read_text())
    curve = summary["runs"]["cot-s0"]["at"][str(cot["train_config"]["steps"])]["votes"]["all"]
    assert curve["n"] == [1, 2, 4] and len(curve["accuracy"]) == 3
    assert curve["tokens"] == sorted(curve["tokens"])


def test_an_interrupted_run_resumes_to_the_same_curve(tmp_path):
    exp = experiment("ch05")
    run = next(r for r in ch05.runs(True, 1) if r.setting == "moe-sigmoid-bias")
    whole = train_run(exp, run, tmp_path / "whole")
    assert train_run(exp, run, tmp_path / "cut", stop_after=4) is None
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "record.json").exists()
    resumed = train_run(exp, run, tmp_path / "cut")
    assert resumed["resumed_from"] == 3  # the last checkpoint before the cut (every 3 steps)
    assert [m["ce"] for m in resumed["curve"]] == [m["ce"] for m in whole["curve"]]
    assert resumed["load_history"] == whole["load_history"]
    assert resumed["curve"][-1]["flops"] == whole["curve"][-1]["flops"]
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # finished: the optimizer state is gone
    assert train_run(exp, run, tmp_path / "cut") == resumed  # finished: read, not trained


def test_experiment_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="experiment"):
        experiment("ch99")
    with pytest.raises(ValueError, match="seeds"):
        run_experiment("ch05", quick=True, seeds=0, out=tmp_path)
    with pytest.raises(ValueError, match="device"):
        run_experiment("ch05", quick=True, device="tpu", out=tmp_path)
    proc = cli("ch07", "--quick")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.parametrize("name", ch05.LONG)
def test_the_shipped_long_dense_runs_are_the_ones_the_code_defines(name):
    from dataclasses import asdict

    from minimoe.experiments import summary

    run = next(r for r in ch05.runs() if r.name == f"{name}-s0")
    shipped = summary("ch05")["settings"][name]
    assert shipped["group"] == run.group == "search" and shipped["seeds"] == [run.seed]
    for recorded, defined in ((shipped["train_config"], asdict(run.train)), (shipped["model_config"], asdict(run.model))):
        defined = json.loads(json.dumps(defined))  # tuples -> lists, as in the record
        assert recorded.keys() == defined.keys()
        for key, value in defined.items():  # the record keeps 5 significant digits
            assert recorded[key] == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), key
    main = summary("ch05")["settings"]["dense"]
    assert shipped["model_config"] == main["model_config"] and run.train.steps > 6 * main["train_config"]["steps"]
    f, curve = shipped["flattening"][0], shipped["curves"][0]
    assert f["fitted_improvement"] is not None
    again = ch05.flattening(list(zip(curve["step"], curve["val_ce"])))  # from the shipped curve
    for key in ("last_window_improvement", "fitted_improvement"):
        assert again[key] == pytest.approx(f[key], abs=1e-3), key
    assert again["first_flat_step_fitted"] == f["first_flat_step_fitted"]


def test_ch10_runs_keep_equal_flops_and_ninety_percent():
    cot, direct = ch10.runs()
    every = cot.train.eval_every
    for run in (cot, direct):
        late = [k for k in run.keep if k >= 0.85 * run.train.steps]
        assert len(late) == 1 and abs(late[0] - 0.9 * run.train.steps) <= every / 2 and late[0] % every == 0
        assert list(run.keep) == sorted(set(run.keep)) and all(0 < k < run.train.steps for k in run.keep)
    assert cot.train.steps in direct.keep  # equal FLOPs: direct's weights at cot's step count
    # equal supervised tokens: direct's extra steps make up for its rows holding fewer scored tokens
    ratio = direct.evaluation["supervised_ratio"]
    assert abs(direct.train.steps / cot.train.steps - ratio) < every / cot.train.steps
    assert ch10.runs(True, 1)[0].keep == ()  # the smoke run is too short for a 90% evaluation


def test_the_shipped_ch10_runs_are_the_ones_the_code_defines():
    from minimoe.experiments import summary

    shipped = summary("ch10")["runs"]
    for run in ch10.runs():
        record = shipped[run.name]
        assert record["steps"] == run.train.steps, run.name
        assert [int(k) for k in record["keep"]] == list(run.keep), run.name
        assert {str(k) for k in (*run.keep, run.train.steps)} <= set(record["at"]), run.name  # each kept step evaluated
        assert record["model_config"]["d_model"] == run.model.d_model, run.name


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _within(seconds: float, condition) -> bool:
    """Whether ``condition()`` comes true within ``seconds`` (polled; generous limits, for loaded machines)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_exits_when_the_runner_is_killed_even_by_sigkill(tmp_path):
    # runner -> worker, as in the pool: the worker watches the runner's pid; the runner dies without cleanup
    started = tmp_path / "watching"
    worker_code = ("import sys, time; from pathlib import Path; from minimoe.experiments.runner import exit_with_parent; "
                   "exit_with_parent(int(sys.argv[1]), 0.1); Path(sys.argv[2]).touch(); time.sleep(600)")
    runner_code = ("import os, subprocess, sys, time; "
                   f"w = subprocess.Popen([sys.executable, '-c', {worker_code!r}, str(os.getpid()), sys.argv[1]]); "
                   "print(w.pid, flush=True); time.sleep(600)")
    runner = subprocess.Popen([sys.executable, "-c", runner_code, str(started)], stdout=subprocess.PIPE, text=True)
    worker = int(runner.stdout.readline())
    try:
        assert _within(120, started.exists), "the worker never started watching"
        time.sleep(1.0)  # ten watch intervals
        assert _alive(worker), "the worker exited while its runner was alive"
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=60)
        assert _within(60, lambda: not _alive(worker)), "the worker outlived its runner"
    finally:
        runner.kill()
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_exit_with_parent_rejects_bad_arguments():
    for bad in (0, -1, True, "1", 1.5):
        with pytest.raises(ValueError, match="parent"):
            exit_with_parent(bad)
    with pytest.raises(ValueError, match="every"):
        exit_with_parent(os.getpid(), 0)

# --- the package pieces ------------------------------------------------------------------------------

def test_settings_hold_activated_width_and_the_upper_bracket():
    s = ch05.settings()
    dense, moe = recipe.count_params(s["dense"]), recipe.count_params(s["moe-switch"])
    width = s["moe-switch"].expert_hidden * (s["moe-switch"].top_k + s["moe-switch"].n_shared_experts)
    assert width == s["dense"].dense_hidden
    fine = s["moe-fine"]
    assert fine.expert_hidden * (fine.top_k + fine.n_shared_experts) == width
    assert recipe.count_params(fine).routed_experts == moe.routed_experts
    upper = recipe.count_params(s["dense-total"]).total
    assert abs(upper - moe.total) / moe.total < 0.01 and moe.total > 2 * dense.total
    assert s["moe-sigmoid"].router == s["moe-sigmoid-bias"].router == "sigmoid"
    assert s["moe-sigmoid"].bias_update_rate == 0 < s["moe-sigmoid-bias"].bias_update_rate


def test_batch_flops_counts_6n_per_token_and_attention_inside_each_sample():
    cfg = ModelConfig(vocab_size=100, d_model=16, n_layers=2, n_heads=2, ffn_hidden=32, max_seq_len=64)
    samples = Mixture({"copy": 1.0}, seed=0).sample(6, "train")
    batch = pack(samples, 64)
    lengths = sample_lengths(batch)
    assert sorted(lengths) == sorted(len(s) - 1 for s in samples)  # input tokens: the sequence without its last
    n = recipe.count_params(cfg).activated
    per_head_layer = 3 * 2 * 2 * cfg.dim_head  # backward 2x forward; q·k and the weighted sum; ctx = L/2 each
    want = sum(6 * n * L + cfg.n_layers * cfg.n_heads * per_head_layer * L * L / 2 for L in lengths)
    assert batch_flops(cfg, batch) == pytest.approx(want)
    padded = collate(samples)
    assert sorted(sample_lengths(padded)) == sorted(lengths)


def test_switched_off_experts_are_never_chosen_and_come_back():
    cfg = preset("tiny-moe").with_(router="sigmoid", bias_update_rate=0.01)
    model = build_model(cfg, seed=0).eval()
    block = next(i for i, b in enumerate(model.blocks) if hasattr(b.ffn, "router"))
    model.blocks[block].ffn.router.bias.copy_(torch.linspace(0.5, -0.5, cfg.n_routed_experts))  # favours 0, 1, 2
    tokens = torch.randint(0, 100, (2, 40))
    chosen = model(tokens).aux[block]["topk_idx"]
    assert (chosen == 0).any()
    with experts_switched_off(model, {block: [0, 1, 2]}):
        off = model(tokens).aux[block]["topk_idx"]
        assert not torch.isin(off, torch.tensor([0, 1, 2])).any()
    assert torch.equal(model(tokens).aux[block]["topk_idx"], chosen)
    with pytest.raises(ValueError, match="block 0 is not an MoE layer"):
        with experts_switched_off(model, {0: [1]}):
            pass
    with pytest.raises(ValueError, match="at least top_k"):
        with experts_switched_off(model, {block: range(cfg.n_routed_experts - 2)}):
            pass


def test_top_experts_takes_the_busiest_and_breaks_ties_by_id():
    m = torch.tensor([[0.1, 0.5, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]])
    assert top_experts(m, 2) == [[1, 2], [0, 1]]
    with pytest.raises(ValueError, match="m: got 5"):
        top_experts(m, 5)


def test_majority_vote_and_its_accuracy():
    assert majority_vote(["3", "4", "4", "3"]) == "3"  # a tie: the first to appear
    assert majority_vote(["7", "5", "5"]) == "5"
    answers = [["1", "2", "1", "1"], ["9", "9", "8", "8"]]
    truths = ["1", "8"]
    assert vote_accuracy(answers, truths, 1) == pytest.approx(5 / 8)
    # n = 2: votes (1,2)->1 right, (1,1)->1 right; (9,9)->9 wrong, (8,8)->8 right
    assert vote_accuracy(answers, truths, 2) == pytest.approx(3 / 4)
    assert vote_accuracy(answers, truths, 4) == pytest.approx(1 / 2)  # "1" right; tie 9/8 -> 9 wrong
    with pytest.raises(ValueError, match="n: got 5"):
        vote_accuracy(answers, truths, 5)
    with pytest.raises(ValueError, match="answers"):
        majority_vote([])


def test_ch10_vote_curve_uses_every_sample():
    votes = {"add1": {"truth": ["2", "3"], "answers": [["2", "2", "1", "2"], ["3", "1", "1", "1"]],
                      "tokens": [[2, 2, 2, 2], [4, 4, 4, 4]]}}
    curve = ch10.vote_curve(votes, ns=(1, 2, 4))
    assert curve["add1"]["accuracy"] == pytest.approx([4 / 8, 2 / 4, 1 / 2])
    assert curve["all"]["tokens"] == pytest.approx([3, 6, 12])


def test_roofline_by_hand():
    cfg = preset("tiny")
    c = recipe.count_params(cfg)
    step = recipe.decode_step(cfg, 10, 1, bandwidth=1e9, peak_flops=1e9, weight_bytes_per_param=4,
                              kv_bytes_per_element=4)
    kv = 10 * cfg.n_layers * 2 * cfg.n_heads * cfg.dim_head * 4
    assert step.weight_bytes == c.activated * 4 and step.kv_bytes == kv
    attn = cfg.n_layers * cfg.n_heads * 2 * 11 * 2 * cfg.dim_head
    assert step.flops == 2 * (c.activated - cfg.d_model) + attn
    assert step.seconds == max(step.memory_s, step.compute_s) and step.bound == "memory"
    batched = recipe.decode_step(cfg, 10, 64, bandwidth=1e9, peak_flops=1e9, weight_bytes_per_param=4,
                                 kv_bytes_per_element=4)
    assert batched.kv_bytes == 64 * kv and batched.flops == 64 * step.flops
    assert batched.weight_bytes == (c.activated + 63 * cfg.d_model) * 4  # weights are read once for the batch
    # An MoE at batch 1 reads its activated experts; a large batch reads nearly all of them.
    assert recipe.experts_touched(256, 8, 1) == pytest.approx(8)
    assert 255 < recipe.experts_touched(256, 8, 4096) <= 256
    v3 = recipe.decode_step("deepseek-v3", 0, 1, bandwidth=1, peak_flops=1)
    assert v3.weight_bytes == pytest.approx(2 * recipe.count_params("deepseek-v3").activated)
    total = recipe.answer_time(cfg, 5, 3, 2, bandwidth=1e9, peak_flops=1e12)
    steps = [recipe.decode_step(cfg, 3 + i, 2, bandwidth=1e9, peak_flops=1e12) for i in range(5)]
    assert total.seconds == pytest.approx(sum(s.seconds for s in steps))
    assert total.gpu_seconds_per_answer == pytest.approx(total.seconds / 2)
    assert total.dollars_per_answer(3600.0) == pytest.approx(total.seconds / 2)
    for bad in (dict(batch=0), dict(position=-1)):
        kwargs = dict(cfg=cfg, position=1, batch=1) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            recipe.decode_step(kwargs.pop("cfg"), kwargs.pop("position"), kwargs.pop("batch"), bandwidth=1,
                               peak_flops=1)


def test_machine_measurements_are_positive_and_finite():
    bw = recipe.measure_bandwidth(megabytes=8, repeats=2)
    flops = recipe.measure_matmul_flops(n=128, repeats=2)
    assert 1e6 < bw < 1e14 and 1e6 < flops < 1e14


def test_flattening_and_reach_on_made_up_curves():
    val = [(100, 2.0), (200, 1.5), (300, 1.40), (400, 1.39), (500, 1.385)]
    f = ch05.flattening(val)
    assert f["last_window_improvement"] == pytest.approx((1.3875 - 1.385) / 1.3875)
    assert f["first_flat_step"] == 400  # 1.3955 (at 360) -> 1.39: under 1%
    assert f["fitted_improvement"] is None and f["first_flat_step_fitted"] is None  # < 3 points per window
    # A straight decline: the line through the last tenth's evaluations gives its exact drop.
    line = [(s, 2.0 - 1e-4 * s) for s in range(100, 5100, 100)]  # 1.5 at 5,000, 1.55 at 4,500
    f = ch05.flattening(line)
    assert f["fitted_improvement"] == pytest.approx(0.05 / 1.55) == pytest.approx(f["last_window_improvement"])
    # A flat curve whose last evaluation dips 3%: point to point it still "improves", the fitted line barely.
    noisy = [(s, 1.0 + 0.004 * (-1) ** (s // 100)) for s in range(100, 10100, 100)]
    noisy[-1] = (10000, 0.97)
    f = ch05.flattening(noisy)
    assert f["last_window_improvement"] > 0.02 and abs(f["fitted_improvement"]) < 0.01
    assert f["first_flat_step_fitted"] is not None and f["first_flat_step_fitted"] <= 3000
    assert ch05._interp_reach(val, 1.45) == pytest.approx(250)
    assert ch05._interp_reach(val, 1.0) is None


def test_seconds_per_token_times_decoding_and_checks_its_arguments():
    model = build_model(ModelConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, max_seq_len=32))
    from minimoe.generate import seconds_per_token

    assert seconds_per_token(model, batch=2, prompt=4, new=3) > 0
    with pytest.raises(ValueError, match="batch"):
        seconds_per_token(model, batch=0)
    with pytest.raises(ValueError, match="at most the model's 32"):
        seconds_per_token(model, prompt=30, new=8)
