"""Attacks on what the grader reads and judges: hostile answer files, NaN, and the answer key in every
chapter. Each is a reproducer notebook graded by ``minimoe grade`` in the sandbox."""

import textwrap

import pytest

from answer_key import WRAPPERS
from attack_helpers import Batch, World, add_cells, check_batch, notebook, run_all, verdict
from evil_answers import CRAFT
from minimoe.grading import exercises_for_chapter

CH00 = "00_setup_and_tour.ipynb"
ATTACKED = {"00.linear_params": 2.0, "00.softmax": 0.0}  # the attack is on stable_softmax's answers only
CHAPTER_FILES = {
    "01": "01_the_recipe.ipynb", "02": "02_the_batter.ipynb", "03": "03_the_pan_dense.ipynb",
    "04": "04_experts_and_the_router.ipynb", "06": "06_the_oven_dispatch_kernel.ipynb", "07": "07_memory.ipynb",
    "08": "08_latent_attention.ipynb", "09": "09_mapreduce_for_experts.ipynb", "10": "10_thinking_costs_tokens.ipynb",
}


def evil(prepare: str, action: str) -> str:
    """Replace torch.save, which the grader's call template uses, so that stable_softmax's answer
    file becomes whatever ``action`` makes of the path."""
    return CRAFT + textwrap.dedent(prepare) + f'''
import os, sys, torch
_real_save = torch.save
def _act(path):
{textwrap.indent(textwrap.dedent(action).strip(), "    ")}
def _evil_save(obj, f, *args, **kwargs):
    caller = sys._getframe(1).f_locals
    if isinstance(f, str) and f.endswith(".out.pt") and caller.get("name") == "stable_softmax":
        _act(f)
        return None
    return _real_save(obj, f, *args, **kwargs)
torch.save = _evil_save
'''


ATTACKS = {
    "hash_bomb": ("EVIL = hash_bomb()", "open(path, 'wb').write(EVIL)"),
    "deep_key": ("EVIL = deep_key()", "open(path, 'wb').write(EVIL)"),
    "repr_bomb": ("EVIL = repr_bomb()", "open(path, 'wb').write(EVIL)"),
    "compressed": ("EVIL = compressed(1 << 24)", "open(path, 'wb').write(EVIL)"),
    "bad_key": ("EVIL = bad_key()", "open(path, 'wb').write(EVIL)"),
    "fifo": ("", "os.mkfifo(path)"),
    "link": ("", "os.symlink(os.path.join(os.path.dirname(os.path.dirname(path)), 'kernel.log'), path)"),
    "huge": ("", "with open(path, 'wb') as f:\n    f.truncate(200 << 20)"),
}
REFUSALS = {  # deep_key: crashes the decoding child, unless a loaded machine makes it run out of time first
    "hash_bomb": "took more than", "deep_key": ("crashed the decoder", "took more than"), "repr_bomb": "200000 parts",
    "compressed": "compressed entry", "bad_key": "dict key of type tuple", "fifo": "not a regular file",
    "link": "could not be opened", "huge": "more than the",
}

NAN_01 = '''
import torch
nan = float("nan")
def count_block_params(d_model, n_heads, n_kv_heads, ffn_hidden):
    return nan
def training_cost(n_params, n_tokens, peak_flops, mfu, price_per_gpu_hour):
    return nan, nan, nan
def implied_mfu(n_params, n_tokens, gpu_hours, peak_flops):
    return torch.tensor(nan)
'''
NAN_10 = '''
nan = float("nan")
def step_seconds(weight_bytes, kv_bytes_per_token, position, batch, flops_per_token, bandwidth, peak_flops):
    return nan
'''


@pytest.fixture(scope="module")
def attacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    # Two graders share the hostile answers (each decodes its own), so that they run side by side.
    decoding = [Batch(root, "decoding", "00"), Batch(root, "decoding2", "00")]
    for i, (name, (prepare, action)) in enumerate(ATTACKS.items()):
        decoding[i % 2].add(name, add_cells(notebook(CH00), evil(prepare, action)), ATTACKED)
    batches = {"decoding": decoding[0], "decoding2": decoding[1]}
    for chapter, filename in CHAPTER_FILES.items():
        batch = Batch(root, f"ch{chapter}", chapter)
        zero = {ex.id: 0.0 for ex in exercises_for_chapter(chapter)}
        batch.add(f"wrappers{chapter}", add_cells(notebook(filename, "exercise"), WRAPPERS[chapter]), zero)
        if chapter == "01":
            batch.add("nan01", add_cells(notebook(filename, "exercise"), NAN_01), zero)
        if chapter == "10":
            batch.add("nan10", add_cells(notebook(filename, "exercise"), NAN_10), zero)
        batches[f"ch{chapter}"] = batch
    world = World(root)
    run_all(list(batches.values()), parallel=4)
    return {**batches, "world": world.changes()}


def test_the_grader_held_and_nothing_outside_changed(attacks):
    for key, batch in attacks.items():
        if key != "world":
            check_batch(batch, attacks["world"])


def _decoding(attacks, name):
    return next(attacks[k] for k in ("decoding", "decoding2") if any(s.name == name for s in attacks[k].submissions))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hostile_answer_files_cost_only_their_exercise(attacks, name):
    decoding = _decoding(attacks, name)
    verdict(decoding, name)
    expected = REFUSALS[name] if isinstance(REFUSALS[name], tuple) else (REFUSALS[name],)
    assert any(e in decoding.text(name) for e in expected), decoding.result(name)["tests"]


def test_a_hash_bomb_costs_one_decode_not_one_per_check(attacks):
    report = _decoding(attacks, "hash_bomb").result("hash_bomb")
    assert report["execution_time"] < 180
    assert "not run again" in " ".join(t["output"] for t in report["tests"])


@pytest.mark.parametrize("chapter", ["01", "10"])
def test_nan_passes_no_check(attacks, chapter):
    batch = attacks[f"ch{chapter}"]
    verdict(batch, f"nan{chapter}")
    assert "finite" in batch.text(f"nan{chapter}") or "NaN" in batch.text(f"nan{chapter}")


@pytest.mark.parametrize("chapter", sorted(CHAPTER_FILES))
def test_wrapping_the_answer_key_earns_nothing_in_any_chapter(attacks, chapter):
    batch = attacks[f"ch{chapter}"]
    verdict(batch, f"wrappers{chapter}")
    assert "own answer" in batch.text(f"wrappers{chapter}")
