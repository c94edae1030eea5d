"""Chapter 05's exercises: capacity with token dropping, the sequence-wise loss, a γ sweep, predictions.

- ``05.capacity``: ``capacity_keep_mask(topk_idx, n_experts, capacity_factor, token_mask)`` against
  ``minimoe.moe.capacity`` (which assignments fit, served slot 0 of every token first).
- ``05.seq_loss``: ``seq_balance_loss(scores, topk_idx, n_sequences, token_mask)`` against
  ``minimoe.moe.sequence_balance_loss`` (DeepSeek-V3 eq. 17-20).
- ``05.gamma_sweep`` (run and interpret): the bias update at three step sizes; the check reruns it.
- ``05.predict``: predict, then check; each answer is a value the check recomputes.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from minimoe.grading.registry import Student, exercise, expect_close, expect_equal, expect_number, expect_tuple
from minimoe.moe import (bias_update, capacity_keep, expert_capacity, expert_counts, sequence_balance_loss,
                         sigmoid_router, switch_aux_loss)


def _scalar(got, what: str) -> torch.Tensor:
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        return torch.tensor(float(got))
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        raise AssertionError(f"{what}: expected a single number (a 0-d tensor), got "
                             f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    return got.reshape(()).float()


def _distinct_topk(rng: torch.Generator, n: int, e: int, k: int, skew: float = 0.0) -> torch.Tensor:
    """(n, k) distinct expert ids per token, from random scores (expert 0 favoured by ``skew``)."""
    scores = torch.randn(n, e, generator=rng)
    scores[:, 0] += skew
    return scores.topk(k, dim=-1).indices


# --- 05.capacity --------------------------------------------------------------------------------------

def _capacity_reference(idx: torch.Tensor, e: int, factor: float, mask: torch.Tensor | None):
    n_real = idx.shape[0] if mask is None else int(mask.sum())
    cap = expert_capacity(n_real, e, idx.shape[1], factor)
    return capacity_keep(idx, e, cap, mask), cap


def _compare_capacity(student: Student, idx: torch.Tensor, e: int, factor: float, mask: torch.Tensor | None,
                      what: str) -> None:
    keep, cap = expect_tuple(student.call("capacity_keep_mask", idx, e, factor, mask), 2,
                             "capacity_keep_mask should return (keep, capacity)")
    want_keep, want_cap = _capacity_reference(idx, e, factor, mask)
    expect_equal(cap, want_cap, f"{what}: the capacity")
    if not isinstance(keep, torch.Tensor) or tuple(keep.shape) != tuple(idx.shape):
        got = tuple(keep.shape) if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise AssertionError(f"{what}: expected keep of shape {tuple(idx.shape)}, got {got}")
    keep = keep.bool()
    if not torch.equal(keep, want_keep):
        token, slot = (keep != want_keep).nonzero()[0].tolist()
        raise AssertionError(f"{what}: token {token}'s slot {slot} (expert {int(idx[token, slot])}) should be "
                             f"{'kept' if want_keep[token, slot] else 'dropped'}")


capacity = exercise("05.capacity", "capacity and token dropping", functions=("capacity_keep_mask",),
               protects=("minimoe.moe.capacity.capacity_keep", "minimoe.moe.capacity.expert_capacity"))


@capacity.check("each expert keeps its first C assignments, slot 0 of every token first", points=3,
                hint="queue the assignments slot by slot (every token's first choice, then every token's second, "
                     "...), tokens in order within a slot; an expert keeps the first C of its queue")
def _capacity_order(student: Student, rng: torch.Generator) -> None:
    for k, choices in ((2, (4, 5, 8)), (3, (4, 5, 6))):  # N·k/E whole, so that rounding is not at stake here
        e = choices[int(torch.randint(0, 3, (1,), generator=rng))]
        idx = _distinct_topk(rng, 40, e, k, skew=1.5)
        _compare_capacity(student, idx, e, 1.0, None, f"capacity_keep_mask({len(idx)} tokens, {e} experts, top-{k}, c=1)")


@capacity.check("the capacity is ceil(c · N·k / E)", points=1,
                hint="C rounds UP, and N counts the real tokens only")
def _capacity_size(student: Student, rng: torch.Generator) -> None:
    idx = _distinct_topk(rng, 37, 6, 2)
    _compare_capacity(student, idx, 6, 1.25, None, "capacity_keep_mask(37 tokens, 6 experts, top-2, c=1.25)")
    _compare_capacity(student, idx, 6, 0.3, None, "capacity_keep_mask(37 tokens, 6 experts, top-2, c=0.3)")


@capacity.check("masked tokens take no place in any queue", points=2,
                hint="a token whose token_mask is False is never kept, does not count in N, and takes no place "
                     "that a real token after it could have had")
def _capacity_mask(student: Student, rng: torch.Generator) -> None:
    idx = _distinct_topk(rng, 30, 5, 2, skew=2.0)
    mask = torch.zeros(30, dtype=torch.bool)
    mask[1 + torch.randperm(29, generator=rng)[:15]] = True  # 15 real tokens (C = 6 exactly at c = 1) ...
    # ... and a PAD first: in a wrong answer it takes the first place in its experts' queues
    _compare_capacity(student, idx, 5, 1.0, mask, f"capacity_keep_mask with {int((~mask).sum())} masked tokens")


@capacity.check("edge cases: an idle expert, every token on one expert, k = E, dropless", points=2,
                hint="c = 0 means no limit; c >= E/k leaves room for every token; an expert nobody chose keeps nothing "
                     "and must raise nothing")
def _capacity_edges(student: Student, rng: torch.Generator) -> None:
    n = 10  # N·k/E whole in each case below
    one = torch.stack([torch.zeros(n, dtype=torch.long), 1 + torch.randint(0, 3, (n,), generator=rng)], 1)  # expert 4 idle
    _compare_capacity(student, one, 5, 1.0, None, "every token's first choice expert 0, expert 4 idle")
    all_e = torch.stack([torch.randperm(4, generator=rng) for _ in range(n)])  # k = E = 4
    _compare_capacity(student, all_e, 4, 0.5, None, "k = E = 4, c = 0.5")
    _compare_capacity(student, one, 5, 0.0, None, "c = 0 (dropless)")
    _compare_capacity(student, one, 5, 5 / 2, None, "c = E/k")


# --- 05.seq_loss ------------------------------------------------------------------------------------

def _compare_seq(student: Student, scores, idx, b: int, mask, what: str) -> None:
    got = _scalar(student.call("seq_balance_loss", scores, idx, b, mask), "seq_balance_loss")
    expect_close(got, sequence_balance_loss(scores, idx, b, mask), what)


seq = exercise("05.seq_loss", "DeepSeek-V3's sequence-wise balance loss", functions=("seq_balance_loss",),
               protects=("minimoe.moe.balance.sequence_balance_loss",))


@seq.check("one sequence: Σ f_i · P_i with V3's f and P", points=2,
           hint="f_i = E / (k·T) times the number of the sequence's tokens that chose i; P_i the mean over the "
                "sequence's tokens of the normalized affinity s'_i")
def _seq_one(student: Student, rng: torch.Generator) -> None:
    e, k, t = 8, 2, 24
    probs = torch.randn(t, e, generator=rng).softmax(-1)  # already normalized per token
    _compare_seq(student, probs, probs.topk(k, -1).indices, 1, None, f"seq_balance_loss(one sequence of {t}, top-{k})")


@seq.check("per sequence, then the mean over sequences", points=2,
           hint="the tokens are laid out sequence by sequence: compute f and P inside each of the n_sequences "
                "rows, the loss of each row, then average the rows' losses (do not pool the tokens)")
def _seq_many(student: Student, rng: torch.Generator) -> None:
    b, t, e, k = 3, 10, 6, 2
    logits = torch.randn(b, t, e, generator=rng)
    logits[0, :, 0] += 3.0  # sequence 0 loves expert 0, sequence 1 expert 1: pooled they look balanced
    logits[1, :, 1] += 3.0
    probs = logits.softmax(-1).reshape(b * t, e)
    _compare_seq(student, probs, probs.topk(k, -1).indices, b, None, f"seq_balance_loss({b} sequences of {t})")


@seq.check("affinities are normalized per token", points=1,
           hint="V3's s are sigmoids, which do not sum to 1 over experts: divide each token's s by their sum first")
def _seq_normalized(student: Student, rng: torch.Generator) -> None:
    scores = torch.randn(15, 7, generator=rng).sigmoid()
    _compare_seq(student, scores, scores.topk(3, -1).indices, 1, None, "seq_balance_loss(one sequence, sigmoid scores)")


@seq.check("masked tokens, a sequence of only PAD, uniform routing", points=2,
           hint="T counts a sequence's real tokens; a sequence without any is left out of the mean; "
                "perfectly even routing with equal scores gives exactly 1")
def _seq_edges(student: Student, rng: torch.Generator) -> None:
    b, t, e, k = 3, 8, 4, 2
    scores = torch.randn(b * t, e, generator=rng).softmax(-1)
    idx = scores.topk(k, -1).indices
    mask = torch.rand(b * t, generator=rng) < 0.7
    mask[:t] = True
    mask[t:2 * t] = False  # the second sequence is all PAD
    _compare_seq(student, scores, idx, b, mask, "seq_balance_loss with PAD and an all-PAD sequence")
    even = torch.stack([torch.arange(k) + (2 * n) % e for n in range(t)])  # (t, k): every expert equally often
    expect_close(_scalar(student.call("seq_balance_loss", torch.full((t, e), 1 / e), even, 1, None), "seq_balance_loss"),
                 torch.tensor(1.0), "seq_balance_loss under uniform routing")


# --- 05.gamma_sweep (run and interpret) -----------------------------------------------------------------

SWEEP_GAMMAS, SWEEP_STEPS, SWEEP_TAIL, SWEEP_BALANCED = (0.0005, 0.005, 0.05), 200, 50, 1.5
SWEEP_RTOL = 2e-2  # the loads are ratios of integer counts; a near-tie decided otherwise moves one count ...
SWEEP_ROUNDS_TOL = 1  # ... and the round at which the load first gets under 1.5 by one


def sweep_router_logits() -> torch.Tensor:
    """The router of the exercise: 512 tokens, 16 experts, experts 0-2 favoured."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(512, 16, generator=g)
    logits[:, :3] += 1.5
    return logits


@lru_cache(maxsize=1)
def gamma_sweep_rerun() -> dict[float, tuple[int | None, float]]:
    """{γ: (rounds until busiest/mean first <= SWEEP_BALANCED or None, its mean over the last SWEEP_TAIL rounds)}.

    Round r routes with the bias after r updates, counts, then updates: SWEEP_STEPS rounds from a zero bias.
    """
    logits = sweep_router_logits()
    out = {}
    for gamma in SWEEP_GAMMAS:
        b, history = torch.zeros(16), []
        for _ in range(SWEEP_STEPS):
            counts = expert_counts(sigmoid_router(logits, 2, bias=b)[1], 16)
            history.append(float(counts.max() / counts.mean()))
            b = bias_update(b, counts, gamma)
        first = next((r for r, v in enumerate(history) if v <= SWEEP_BALANCED), None)
        out[gamma] = (first, sum(history[-SWEEP_TAIL:]) / SWEEP_TAIL)
    return out


sweep = exercise("05.gamma_sweep", "sweep the bias step γ", functions=("gamma_sweep", "best_gamma"))


@sweep.check("the rounds to balance and the final load for each γ, as a rerun gives them", points=2,
             hint=f"for each γ: a fresh zero bias, {SWEEP_STEPS} rounds of route (sigmoid_router, k=2), count, "
                  f"bias_update; report the first round whose busiest/mean load is <= {SWEEP_BALANCED} and the mean "
                  f"load of the last {SWEEP_TAIL} rounds (compared at ±{SWEEP_ROUNDS_TOL} round and rtol {SWEEP_RTOL})")
def _sweep_loads(student: Student, rng: torch.Generator) -> None:
    got, want = student.value("gamma_sweep"), gamma_sweep_rerun()
    if not isinstance(got, dict) or {round(float(g), 6) for g in got} != {round(g, 6) for g in want}:
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise AssertionError(f"gamma_sweep: expected a dict keyed by the gammas {list(want)}, got {keys}")
    by_gamma = {round(float(g), 6): v for g, v in got.items()}
    for gamma, (rounds, tail) in want.items():
        row = by_gamma[round(gamma, 6)]
        if not isinstance(row, (tuple, list)) or len(row) != 2:
            raise AssertionError(f"gamma_sweep[{gamma}]: expected (rounds to balance, mean load of the last "
                                 f"{SWEEP_TAIL} rounds), got {row!r}")
        got_rounds = row[0].item() if isinstance(row[0], torch.Tensor) else row[0]
        if (got_rounds is None) != (rounds is None) or (
                rounds is not None and (not isinstance(got_rounds, int) or abs(got_rounds - rounds) > SWEEP_ROUNDS_TOL)):
            raise AssertionError(f"gamma_sweep[{gamma}]: rounds to balance {got_rounds!r} differ from the rerun's")
        expect_number(row[1], tail, f"gamma_sweep[{gamma}] mean load of the last {SWEEP_TAIL} rounds", rel=SWEEP_RTOL)


@sweep.check("the γ that balances best", points=1,
             hint=f"the γ whose busiest/mean load over the last {SWEEP_TAIL} rounds is smallest (closest to 1)")
def _sweep_best(student: Student, rng: torch.Generator) -> None:
    runs = gamma_sweep_rerun()
    best = min(runs, key=lambda g: runs[g][1])
    expect_number(student.value("best_gamma"), best, "best_gamma", rel=1e-6)


# --- 05.predict -------------------------------------------------------------------------------------------

predict = exercise("05.predict", "predict, then check",
                   functions=("max_load_bound", "switch_floor", "dropped_share", "shrunk_logits_load"))


@predict.check("the ceiling of busiest / mean load", points=1,
               hint="with top-k an expert takes at most one of each token's k slots: at most N of the N·k assignments")
def _predict_bound(student: Student, rng: torch.Generator) -> None:
    idx = _distinct_topk(rng, 64, 16, 3, skew=100.0)  # expert 0 in every token's top-3: the busiest it can be
    counts = expert_counts(idx, 16)
    expect_number(student.value("max_load_bound"), float(counts.max() / counts.mean()), "max_load_bound", rel=1e-3)


@predict.check("the Switch loss below 1", points=1,
               hint="f has no gradient; for fixed f, E · Σ f_i P_i is smallest when all of P sits on one expert: which?")
def _predict_floor(student: Student, rng: torch.Generator) -> None:
    idx = torch.tensor([[0], [0], [1]])  # f = (2/3, 1/3)
    floor = switch_aux_loss(torch.tensor([[0.0, 1.0]] * 3), idx)  # every probability on the least-loaded expert
    expect_number(student.value("switch_floor"), float(floor), "switch_floor", rel=1e-3)


@predict.check("how much a capacity limit drops", points=1,
               hint="count what expert 0 is offered against its capacity C = ceil(c · N·k / E); the other experts' "
                    "queues are short")
def _predict_dropped(student: Student, rng: torch.Generator) -> None:
    n = 100
    idx = torch.stack([torch.zeros(n, dtype=torch.long), 1 + torch.arange(n) % 3], 1)  # 1st: expert 0; 2nd: 1, 2, 3
    keep = capacity_keep(idx, 4, expert_capacity(n, 4, 2, 1.0))
    expect_number(student.value("dropped_share"), float(1 - keep.float().mean()), "dropped_share", rel=1e-3)


@predict.check("dividing every router logit by 10", points=1,
               hint="the load depends only on which k experts are largest for each token")
def _predict_shrunk(student: Student, rng: torch.Generator) -> None:
    logits = torch.randn(200, 8, generator=rng)
    logits[:, 0] += 2.0
    same = torch.equal(logits.topk(2, -1).indices, (logits / 10).topk(2, -1).indices)
    expect_equal(student.value("shrunk_logits_load"), "the same" if same else "changed", "shrunk_logits_load")
