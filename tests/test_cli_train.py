"""`minimoe train`, `minimoe generate`, `minimoe export`: the main job, and bad arguments that change nothing."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from minimoe.course import baked, baked_path, shipped_baked
from minimoe.train import read_checkpoint


def run(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "minimoe.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run("train", "--preset", "tiny", "--steps", "6", "--out", str(out), "--samples", "300",
               "--eval-every", "3", "--checkpoint-every", "3", "--batch-size", "8", "--warmup", "2")
    assert proc.returncode == 0, proc.stderr
    return out


def test_train_writes_checkpoint_metrics_and_plot(run_dir):
    assert {"checkpoint.pt", "metrics.jsonl", "loss.png"} <= {p.name for p in run_dir.iterdir()}
    assert read_checkpoint(run_dir)["step"] == 6
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6


def test_train_resumes_and_extends(run_dir, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for p in run_dir.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    proc = run("train", "--preset", "tiny", "--steps", "8", "--out", str(out), "--samples", "300",
               "--eval-every", "4", "--batch-size", "8", "--warmup", "2")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and read_checkpoint(out)["step"] == 8


def test_generate_answers_a_prompt(run_dir):
    proc = run("generate", str(run_dir), "--prompt", "12+34=", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("12+34=")


def test_generate_takes_a_baked_models_name_from_any_folder(tmp_path):
    by_name = run("generate", "tiny", "--prompt", "12+34=", "--max-new-tokens", "8", cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stderr
    by_path = run("generate", str(baked_path("tiny")), "--prompt", "12+34=", "--max-new-tokens", "8", cwd=tmp_path)
    assert by_name.stdout == by_path.stdout and by_name.stdout.startswith("12+34=")


@pytest.mark.parametrize("name, message", [
    ("tinyy", "no checkpoint at 'tinyy', and no baked model of that name (baked: tiny,"),
    ("moe-none", "only the training record of 'moe-none' is shipped"),
])
def test_generate_says_which_baked_models_exist(tmp_path, name, message):
    proc = run("generate", name, "--prompt", "1+1=", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["generate", "{missing}", "--prompt", "1+1="], "no checkpoint"),
    (["generate", "{run}", "--prompt", "naïve"], "not in the vocabulary"),
    (["train", "--preset", "huge", "--steps", "2", "--out", "{run}"], "preset"),
    (["train", "--preset", "small", "--steps", "2", "--out", "{run}"], "not of preset 'small'"),
    (["train", "--preset", "tiny", "--steps", "2", "--out", "{run}", "--data", "{missing}"], "missing"),
])
def test_bad_arguments_say_what_is_wrong_and_change_nothing(run_dir, tmp_path, args, message):
    before = snapshot(run_dir)
    args = [a.format(run=run_dir, missing=tmp_path / "missing") for a in args]
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert snapshot(run_dir) == before


def test_a_corrupted_checkpoint_is_a_clear_error(run_dir, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((run_dir / "checkpoint.pt").read_bytes()[:1000])
    proc = run("generate", str(broken), "--prompt", "1+1=")
    assert proc.returncode == 2 and "corrupted or truncated" in proc.stderr


def test_export_writes_a_compact_checkpoint_with_its_curve(run_dir, tmp_path):
    out = tmp_path / "tiny.pt"
    proc = run("export", str(run_dir), str(out))
    assert proc.returncode == 0, proc.stderr
    obj = read_checkpoint(out)
    assert obj["optimizer"] is None and len(obj["extra"]["metrics"]) == 6
    assert out.stat().st_size < 0.4 * (run_dir / "checkpoint.pt").stat().st_size


def test_the_baked_baseline_loads_and_is_small():
    model, info = baked("tiny")
    path = Path(info["path"])
    assert path.stat().st_size <= 5_000_000
    assert info["extra"]["metrics"][-1]["val_ce"] < 1.0
    assert not model.training
    with pytest.raises(ValueError, match="name"):
        baked("enormous")
    assert "tiny" in shipped_baked() and "moe-none" not in shipped_baked()


def test_moe_training_reports_real_tokens_per_second_and_dispatches_through_auto(tmp_path):
    import json

    out = tmp_path / "moe"
    proc = run("train", "--preset", "tiny-moe", "--steps", "3", "--out", str(out), "--samples", "200",
               "--batch-size", "2", "--warmup", "1", "--eval-every", "3", "--checkpoint-every", "3")
    assert proc.returncode == 0, proc.stderr
    assert "dispatch auto" in proc.stdout and "packed rows of 256" in proc.stdout
    assert "real tokens/s" in proc.stdout  # the closing line
    assert "real_tok_s=" in proc.stderr  # the progress bar (tqdm writes to stderr)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens_per_s"] > 0 and 0 < r["real_tokens"] <= r["positions"] for r in records)
    obj = read_checkpoint(out)
    assert obj["extra"]["dispatch"] == "auto" and obj["data"]["packed"] is True


def test_train_refuses_an_unknown_dispatch_and_a_row_longer_than_the_model(tmp_path):
    proc = run("train", "--preset", "tiny-moe", "--steps", "2", "--out", str(tmp_path / "a"), "--dispatch", "gpu")
    assert proc.returncode == 2 and "invalid choice: 'gpu'" in proc.stderr
    proc = run("train", "--preset", "micro", "--steps", "2", "--out", str(tmp_path / "b"), "--seq-len", "512")
    assert proc.returncode == 2 and "--seq-len: got 512" in proc.stderr
    proc = run("train", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "c"), "--seq-len", "100",
               "--samples", "3000")
    assert proc.returncode == 2 and "needs" in proc.stderr and "positions" in proc.stderr
    assert not any((tmp_path / n).exists() for n in "abc")
