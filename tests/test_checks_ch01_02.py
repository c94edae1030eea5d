"""The checks of chapter 01's MoE block count and chapter 02's byte-pair merges: the answer passes, the
usual mistakes lose exactly their own points, and the references agree with the package."""

from collections import Counter

import pytest

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.grading import get_exercise, run_checks
from minimoe.grading.checks import ch01, ch02
from minimoe.grading.student import LocalStudent


def score(exercise_id, **namespace):
    return {o.name: o for o in run_checks(get_exercise(exercise_id), LocalStudent(namespace), seed=0)}


# --- 01.moe_params -----------------------------------------------------------------------------------

def moe_block_params(d, n_heads, n_experts, n_shared, top_k, hidden):
    common = 4 * d * d + 2 * d + d * n_experts
    return common + (n_experts + n_shared) * 3 * d * hidden, common + (top_k + n_shared) * 3 * d * hidden


def test_moe_reference_is_recipe_count_params_of_one_block():
    cfg = ModelConfig(name="x", vocab_size=10, d_model=64, n_layers=3, n_heads=4, ffn_hidden=0, n_routed_experts=8,
                      n_shared_experts=1, top_k=2, expert_hidden=32, n_dense_layers=0)
    c = recipe.count_params(cfg)
    total, active = ch01._moe_reference(64, 4, 8, 1, 2, 32)
    assert c.total == c.embedding + c.output_head + 64 + 3 * total
    assert c.activated == 64 + c.output_head + 64 + 3 * active
    assert (total, active) == moe_block_params(64, 4, 8, 1, 2, 32)


def test_moe_params_answer_passes_and_mistakes_lose_their_own_points():
    assert all(o.passed for o in score("01.moe_params", moe_block_params=moe_block_params).values())
    no_router = score("01.moe_params", moe_block_params=lambda d, h, e, s, k, hid: tuple(
        v - d * e for v in moe_block_params(d, h, e, s, k, hid)))
    assert not any(o.passed for o in no_router.values())
    shared_inactive = score("01.moe_params", moe_block_params=lambda d, h, e, s, k, hid: (
        moe_block_params(d, h, e, s, k, hid)[0], moe_block_params(d, h, e, 0, k, hid)[1]))
    assert shared_inactive["routed experts only"].passed
    assert not shared_inactive["shared experts, and every expert activated"].passed


# --- 02.bpe --------------------------------------------------------------------------------------------

def most_frequent_pair(ids):
    counts = Counter(zip(ids, ids[1:]))
    return max(counts, key=counts.get) if counts else None


merge = ch02._merge  # the reference; test_bpe_reference_merge pins it down


def test_bpe_answer_passes():
    assert all(o.passed for o in score("02.bpe", most_frequent_pair=most_frequent_pair, merge=merge).values())


def test_bpe_usual_mistakes_lose_their_own_points():
    def by_value(ids):  # ties to the smallest pair, not the first seen
        counts = Counter(zip(ids, ids[1:]))
        return min(counts, key=lambda p: (-counts[p], p)) if counts else None

    ties = score("02.bpe", most_frequent_pair=by_value, merge=merge)
    assert ties["most_frequent_pair counts every adjacent pair"].passed
    assert not ties["ties go to the pair seen first; fewer than two ids have no pair"].passed

    def overlapping(ids, pair, new_id):  # replaces overlapping occurrences: [7, 7, 7] -> [99, 99]
        return [new_id if (a, b) == tuple(pair) else a for a, b in zip(ids, ids[1:])] if len(ids) > 1 else list(ids)

    merged = score("02.bpe", most_frequent_pair=most_frequent_pair, merge=overlapping)
    assert not merged["merge replaces the pair left to right, without overlaps"].passed
    assert merged["most_frequent_pair counts every adjacent pair"].passed

    def skipping_overlaps(ids):  # counts (7, 7) once in [7, 7, 7]
        text = ",".join(map(str, ids))
        pairs = set(zip(ids, ids[1:]))
        return max(pairs, key=lambda p: (text.count(f"{p[0]},{p[1]}"))) if pairs else None

    counted = score("02.bpe", most_frequent_pair=skipping_overlaps, merge=merge)
    assert not counted["most_frequent_pair counts every adjacent pair"].passed


@pytest.mark.parametrize("ids, pair, want", [([7, 7, 7], (7, 7), [9, 7]), ([7, 7, 7, 7], (7, 7), [9, 9]),
                                             ([1, 2, 3], (3, 1), [1, 2, 3]), ([], (1, 2), [])])
def test_bpe_reference_merge(ids, pair, want):
    assert merge(ids, pair, 9) == want
