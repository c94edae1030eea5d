"""Chapters 04 and 05's checks: the solutions' answers pass, and each common mistake loses its own points.

The answers are taken from solutions/ (the one source), so a check and its solution cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from minimoe.course import baked
from minimoe.data import Mixture, collate
from minimoe.grading import get_exercise, run_checks
from minimoe.grading.checks.ch04 import ablation_rerun
from minimoe.grading.checks.ch05 import gamma_sweep_rerun
from minimoe.grading.student import LocalStudent
from minimoe.moe.viz import domain_expert_matrix, expert_assignments, expert_load, route_tokens, sample_tokens

ROOT = Path(__file__).resolve().parent.parent


def solution_functions(notebook: str, *names: str) -> dict:
    """Run the solution cells that define ``names`` and return those functions."""
    namespace = {"torch": torch, "F": F, "math": math}
    for cell in nbformat.read(ROOT / "solutions" / notebook, as_version=4).cells:
        if cell.cell_type == "code" and any(f"def {name}(" in cell.source for name in names):
            exec(cell.source, namespace)  # noqa: S102 - our own solution notebook
    return {name: namespace[name] for name in names}


SOL04 = solution_functions("04_experts_and_the_router.ipynb", "moe_forward")
SOL05 = solution_functions("05_keeping_experts_busy.ipynb", "capacity_keep_mask", "seq_balance_loss")


def score(exercise_id: str, **namespace) -> dict[str, bool]:
    return {o.name: o.passed for o in run_checks(get_exercise(exercise_id), LocalStudent(namespace))}


def failed(outcomes: dict[str, bool]) -> set[str]:
    return {name for name, passed in outcomes.items() if not passed}


# --- 04.moe_forward -----------------------------------------------------------------------------------

def test_the_solution_moe_forward_passes_every_check():
    assert not failed(score("04.moe_forward", **SOL04))


def test_moe_forward_mistakes_lose_their_own_checks():
    right = SOL04["moe_forward"]

    def ignores_mask(x, weights, k, token_mask=None):
        return right(x, weights, k, None)

    def zeroes_pad(x, weights, k, token_mask=None):  # PAD gets nothing, not even the shared expert
        y = right(x, weights, k, token_mask)
        return y if token_mask is None else y * token_mask[:, None]

    def forgets_shared(x, weights, k, token_mask=None):
        return right(x, {n: w for n, w in weights.items() if not n.startswith("shared.")}, k, token_mask)

    def needs_shared(x, weights, k, token_mask=None):
        weights["shared.w_gate.weight"].shape  # KeyError without a shared expert
        return right(x, weights, k, token_mask)

    def no_renormalize(x, weights, k, token_mask=None):  # the raw top-k probabilities as gates
        probs = (x @ weights["router.weight"].T).softmax(-1)
        scale = probs.topk(k, -1).values.sum(-1, keepdim=True)  # (N, 1): what renormalizing divided by
        shared = right(x, {**weights, "experts.w_down.weight": torch.zeros_like(weights["experts.w_down.weight"])},
                       k, token_mask)
        return (right(x, weights, k, token_mask) - shared) * scale + shared

    assert failed(score("04.moe_forward", moe_forward=ignores_mask)) == {"PAD positions get no routed output"}
    assert failed(score("04.moe_forward", moe_forward=zeroes_pad)) == {"PAD positions get no routed output"}
    assert {"the shared expert sees every token", "PAD positions get no routed output"} <= failed(
        score("04.moe_forward", moe_forward=forgets_shared))
    assert "routed experts: route, dispatch, combine" not in failed(score("04.moe_forward", moe_forward=forgets_shared))
    assert failed(score("04.moe_forward", moe_forward=needs_shared)) == {
        "edge cases: an idle expert, every token on one expert, k = E, no shared expert"}
    assert "routed experts: route, dispatch, combine" in failed(score("04.moe_forward", moe_forward=no_renormalize))


# --- 04.ablation and 04.predict ------------------------------------------------------------------------

def test_the_ablation_check_accepts_the_rerun_and_rejects_other_numbers():
    expert, losses = ablation_rerun()
    most = max(losses, key=lambda d: losses[d][1] - losses[d][0])
    assert not failed(score("04.ablation", ablated_expert=expert, ablation=losses, most_hurt=most))
    off = {d: (b * 1.01, a) for d, (b, a) in losses.items()}  # 1% off: beyond the stated rtol 1e-3
    least = min(losses, key=lambda d: losses[d][1] - losses[d][0])
    assert failed(score("04.ablation", ablated_expert=(expert + 1) % 16, ablation=off, most_hurt=least)) == {
        "the busiest expert of layer 1", "the loss per domain, before and after", "the domain the ablation hurts most"}
    missing = {d: v for d, v in list(losses.items())[1:]}
    assert "the loss per domain, before and after" in failed(score("04.ablation", ablation=missing))


def test_the_ablation_rerun_is_the_experiment_the_exercise_describes():
    expert, losses = ablation_rerun()
    model, _ = baked("moe-aux")
    samples = Mixture(seed=4).sample(120, "val")
    assert expert == int(expert_load(model, samples, layer=1).argmax())
    d = sorted(losses)[0]
    with torch.no_grad():
        before = float(model(**collate([s for s in samples if s.domain == d]).model_inputs()).ce)
    assert before == pytest.approx(losses[d][0], rel=1e-5)
    assert any(after != before for before, after in losses.values())  # knocking out the expert changed something


def test_the_predictions_are_checked_against_values_the_check_computes():
    right = dict(groups_at_most=1, tokens_changed_by_shift=0, finer_activated_ratio=1.0)
    assert not failed(score("04.predict", **right))
    wrong = dict(groups_at_most=2, tokens_changed_by_shift=1000, finer_activated_ratio=4.0)
    assert len(failed(score("04.predict", **wrong))) == 3


# --- 05.capacity and 05.seq_loss ------------------------------------------------------------------------

def test_the_solution_capacity_and_sequence_loss_pass_every_check():
    assert not failed(score("05.capacity", capacity_keep_mask=SOL05["capacity_keep_mask"]))
    assert not failed(score("05.seq_loss", seq_balance_loss=SOL05["seq_balance_loss"]))


def test_capacity_mistakes_lose_their_own_checks():
    right = SOL05["capacity_keep_mask"]

    def rounds_down(idx, e, c, mask=None):
        keep, cap = right(idx, e, c, mask)
        n = idx.shape[0] if mask is None else int(mask.sum())
        return keep, (int(c * n * idx.shape[1] / e) if c > 0 else cap)

    def pad_takes_a_place(idx, e, c, mask=None):
        keep, cap = right(idx, e, c, None)
        if mask is None:
            return keep, cap
        n_real = int(mask.sum())
        cap = math.ceil(c * n_real * idx.shape[1] / e) if c > 0 else n_real
        keep, _ = right(idx, e, c * n_real / idx.shape[0], None) if c > 0 else right(idx, e, 0.0, None)
        return keep & mask[:, None], cap

    def token_major(idx, e, c, mask=None):
        _, cap = right(idx, e, c, mask)
        real = torch.ones(idx.shape[0], dtype=torch.bool) if mask is None else mask
        keep, taken = torch.zeros_like(idx, dtype=torch.bool), [0] * e
        for t in range(idx.shape[0]):
            for s in range(idx.shape[1]):
                if real[t] and taken[int(idx[t, s])] < cap:
                    keep[t, s], taken[int(idx[t, s])] = True, taken[int(idx[t, s])] + 1
        return keep, cap

    assert failed(score("05.capacity", capacity_keep_mask=rounds_down)) == {"the capacity is ceil(c · N·k / E)"}
    assert failed(score("05.capacity", capacity_keep_mask=pad_takes_a_place)) == {"masked tokens take no place in any queue"}
    assert "each expert keeps its first C assignments, slot 0 of every token first" in failed(
        score("05.capacity", capacity_keep_mask=token_major))


def test_sequence_loss_mistakes_lose_their_own_checks():
    right = SOL05["seq_balance_loss"]

    def pooled(scores, idx, n_sequences, mask=None):
        return right(scores, idx, 1, mask) if mask is None else right(scores, idx, n_sequences, mask)

    def unnormalized(scores, idx, n_sequences, mask=None):  # P from the raw affinities
        e, k = scores.shape[1], idx.shape[1]
        real = torch.ones(len(scores), dtype=torch.bool) if mask is None else mask
        losses = []
        for rows in torch.arange(len(scores)).view(n_sequences, -1):
            rows = rows[real[rows]]
            if len(rows):
                f = torch.bincount(idx[rows].reshape(-1), minlength=e).float() * e / (k * len(rows))
                losses.append((f * scores[rows].mean(0)).sum())
        return torch.stack(losses).mean()

    def ignores_mask(scores, idx, n_sequences, mask=None):
        return right(scores, idx, n_sequences, None)

    assert failed(score("05.seq_loss", seq_balance_loss=pooled)) == {"per sequence, then the mean over sequences"}
    assert failed(score("05.seq_loss", seq_balance_loss=ignores_mask)) == {"masked tokens, a sequence of only PAD, uniform routing"}
    assert failed(score("05.seq_loss", seq_balance_loss=unnormalized)) == {"affinities are normalized per token"}


# --- 05.gamma_sweep and 05.predict -----------------------------------------------------------------------

def test_the_gamma_sweep_check_accepts_the_rerun_within_its_tolerance_only():
    runs = gamma_sweep_rerun()
    best = min(runs, key=lambda g: runs[g][1])
    assert not failed(score("05.gamma_sweep", gamma_sweep=runs, best_gamma=best))
    late = {g: (r + 5 if r is not None else 5, m) for g, (r, m) in runs.items()}
    assert failed(score("05.gamma_sweep", gamma_sweep=late, best_gamma=max(runs))) == {
        "the rounds to balance and the final load for each γ, as a rerun gives them", "the γ that balances best"}
    # the small γ balances slowly, the large one quickly but oscillates above the middle one
    (slow, slow_tail), (mid, mid_tail), (fast, fast_tail) = (runs[g] for g in sorted(runs))
    assert fast < mid < slow and mid_tail < min(slow_tail, fast_tail)


def test_the_chapter_05_predictions():
    right = dict(max_load_bound=16 / 3, switch_floor=2 / 3, dropped_share=0.25, shrunk_logits_load="the same")
    assert not failed(score("05.predict", **right))
    wrong = dict(max_load_bound=16.0, switch_floor=1.0, dropped_share=0.5, shrunk_logits_load="changed")
    assert len(failed(score("05.predict", **wrong))) == 4


# --- the load every chapter shows: real tokens only ---------------------------------------------------

def test_expert_load_counts_real_tokens_only_and_matches_routing_one_sample_at_a_time():
    model, _ = baked("moe-aux")
    samples = Mixture(seed=2).sample(20, "val")
    counts = expert_assignments(model, samples, batch_size=7)  # padded batches of mixed lengths
    k = model.cfg.top_k
    for n, sample in enumerate(samples):
        tokens = sample_tokens(sample)[0]  # one sample alone: no PAD at all
        for layer, (idx, _) in route_tokens(model, tokens).items():
            alone = torch.bincount(idx.reshape(-1), minlength=model.cfg.n_routed_experts).float()
            torch.testing.assert_close(counts[layer][n], alone)
            assert counts[layer][n].sum() == k * len(tokens)
    load = expert_load(model, samples, layer=1)
    torch.testing.assert_close(load, counts[1].sum(0) / counts[1].sum())
    torch.testing.assert_close(expert_load(model, samples, layer=1, batch_size=20), load)
    matrix = domain_expert_matrix(model, samples, layer=1)
    used = matrix.sum(1) > 0
    torch.testing.assert_close(matrix[used].sum(1), torch.ones(int(used.sum())))
    with pytest.raises(ValueError, match="layer"):
        expert_load(model, samples, layer=0)  # block 0 is dense


def test_chapters_04_and_05_state_the_same_load_for_moe_aux():
    """Both chapters print layer 1's load of moe-aux on the same 120 validation problems, computed one way."""
    import re

    def outputs(name: str) -> str:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    ch04 = re.search(r"busiest expert: ([\d.]+)x the mean load, idlest: ([\d.]+)x", outputs("04_experts_and_the_router.ipynb"))
    ch05 = re.search(r"layer 1: busiest ([\d.]+)x the mean .*idlest ([\d.]+)x", outputs("05_keeping_experts_busy.ipynb"))
    assert ch04 and ch05 and ch04.groups() == ch05.groups()


@pytest.mark.parametrize("chapter", ["04_experts_and_the_router", "05_keeping_experts_busy"])
def test_the_lecture_does_not_hand_over_the_exercise_answers(chapter):
    """No line of a solution block (beyond short generic ones) appears in the lecture notebook."""
    lecture = "\n".join(c.source for c in nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4).cells)
    lines, inside = [], False
    for cell in nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4).cells:
        for line in cell.source.splitlines() if cell.cell_type == "code" else []:
            inside = (inside or line.strip() == "# BEGIN SOLUTION") and line.strip() != "# END SOLUTION"
            code = line.split("#")[0].strip()
            if inside and len(code) > 30:
                lines.append(code)
    assert lines
    leaked = [line for line in lines if line in lecture]
    assert not leaked, leaked
