"""Chapter 03's checks: right answers pass, the usual wrong ones lose exactly their own points."""

import math

import pytest
import torch

from minimoe.data import Mixture, collate
from minimoe.grading import get_exercise, run_checks
from minimoe.grading.checks import ch03
from minimoe.grading.student import LocalStudent
from minimoe.model import apply_rope, rope_angles


def one_head(q, k, v):
    t, d = q.shape
    scores = (q @ k.T / math.sqrt(d)).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(dim=-1) @ v


def make_mha(kv_of=lambda h, n_heads, n_kv: h // (n_heads // n_kv), rope=True, from_zero=False):
    """The answer, or a usual mistake: the wrong key/value head, no RoPE, positions counted from 0."""
    def multi_head_attention(x, wq, wk, wv, wo, n_heads, n_kv_heads, positions):
        d = wq.shape[0] // n_heads
        q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
        pos = torch.arange(len(positions)) if from_zero else positions
        cos, sin = rope_angles(pos, d)
        out = []
        for h in range(n_heads):
            g = kv_of(h, n_heads, n_kv_heads)
            q_h, k_h = q[:, h * d:(h + 1) * d], k[:, g * d:(g + 1) * d]
            if rope:
                q_h, k_h = apply_rope(q_h, cos, sin), apply_rope(k_h, cos, sin)
            out.append(one_head(q_h, k_h, v[:, g * d:(g + 1) * d]))
        return torch.cat(out, dim=-1) @ wo.T
    return multi_head_attention


def score(exercise_id, **namespace):
    return {o.name: o for o in run_checks(get_exercise(exercise_id), LocalStudent(namespace))}


def test_mha_right_answer_passes_and_mistakes_lose_their_own_points():
    assert all(o.passed for o in score("03.mha", multi_head_attention=make_mha()).values())
    interleaved = score("03.mha", multi_head_attention=make_mha(kv_of=lambda h, n, kv: h % kv))
    assert interleaved["several heads, each with its own keys and values"].passed
    assert not interleaved["grouped-query attention: query heads share keys and values"].passed
    no_rope = score("03.mha", multi_head_attention=make_mha(rope=False))
    assert not any(o.passed for o in no_rope.values())
    from_zero = score("03.mha", multi_head_attention=make_mha(from_zero=True))  # ignores the positions given
    assert from_zero["several heads, each with its own keys and values"].passed
    assert not from_zero["one token, one head, and positions that are not 0, 1, 2, ..."].passed


def test_mha_inputs_are_fresh_for_every_run():
    seen = []

    def spy(x, *rest):
        seen.append(x.clone())
        return make_mha()(x, *rest)

    ex = get_exercise("03.mha")
    run_checks(ex, LocalStudent({"multi_head_attention": spy}), seed=0)
    first = list(seen)
    seen.clear()
    run_checks(ex, LocalStudent({"multi_head_attention": spy}), seed=1)
    assert len(seen) == len(first) >= 7
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, seen))


@pytest.fixture(scope="module")
def sweep():
    return ch03.sweep_reference()


def test_sweep_reported_numbers_are_checked_against_a_rerun(sweep):
    initial, final = sweep
    assert abs(initial - math.log(100)) < 0.05  # an untrained model: about ln(vocab)
    best = min(final, key=final.get)
    barely = [lr for lr in ch03.SWEEP_LRS if final[lr] > 0.95 * initial]
    assert barely == [1e-4] and best not in barely  # the sweep has something to read
    right = dict(initial_val=initial, final_val=dict(final), best_lr=best, barely_learns=barely)
    assert all(o.passed for o in score("03.lr_sweep", **right).values())
    off = dict(right, final_val={lr: v * 1.05 for lr, v in final.items()})  # another run's numbers
    results = score("03.lr_sweep", **off)
    assert not results["the final validation loss of every learning rate"].passed
    assert results["the validation loss before training"].passed
    misread = score("03.lr_sweep", **dict(right, best_lr=max(final, key=final.get), barely_learns=[]))
    assert not misread["what the sweep says: the best rate, and the rates that barely learn"].passed
    missing_rate = score("03.lr_sweep", **dict(right, final_val={lr: final[lr] for lr in ch03.SWEEP_LRS[:-1]}))
    assert "one entry per learning rate" in missing_rate["the final validation loss of every learning rate"].message


def test_predictions_are_checked_against_measurements():
    right = dict(first_loss=math.log, cache_positions=lambda p, n: p + n - 1,
                 pad_share=lambda ls: 1 - sum(n - 1 for n in ls) / (len(ls) * (max(ls) - 1)))
    assert all(o.passed for o in score("03.predict", **right).values())
    wrong = dict(first_loss=math.log2, cache_positions=lambda p, n: p + n,
                 pad_share=lambda ls: 1 - sum(ls) / (len(ls) * max(ls)))  # forgets that the last token is not read
    assert not any(o.passed for o in score("03.predict", **wrong).values())


def test_pad_share_reference_is_what_collate_measures():
    samples = Mixture(seed=3).sample(40)
    batch = collate(samples)
    lengths = [int(row.sum()) + 1 for row in batch.token_mask]
    assert lengths == [len(s.prompt) + len(s.completion) + 3 for s in samples]  # BOS prompt SEP completion EOS
    assert 1 - sum(n - 1 for n in lengths) / (40 * (max(lengths) - 1)) == pytest.approx(batch.pad_fraction, abs=1e-12)
