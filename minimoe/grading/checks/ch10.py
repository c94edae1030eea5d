"""Chapter 10's exercises: greedy decoding with a KV cache; the decoding roofline; majority votes."""

from __future__ import annotations

from dataclasses import asdict

import torch

from minimoe.config import ModelConfig
from minimoe.generate import generate, vote_accuracy
from minimoe.grading.registry import Student, exercise, expect_equal, expect_number, expect_tuple
from minimoe.model import build_model

decode = exercise("10.greedy_cache", "greedy decoding with a KV cache", functions=("greedy_decode",),
    protects=("minimoe.generate.generate",))

_CFG = ModelConfig(name="exercise", vocab_size=30, d_model=32, n_layers=2, n_heads=2, ffn_hidden=48, max_seq_len=64)


def _case(rng: torch.Generator):
    seed = int(torch.randint(0, 10_000, (1,), generator=rng))
    weights = {k: v.clone() for k, v in build_model(_CFG, seed=seed).state_dict().items()}
    prompt = torch.randint(0, _CFG.vocab_size, (int(torch.randint(1, 8, (1,), generator=rng)),), generator=rng).tolist()
    n_new = int(torch.randint(1, 20, (1,), generator=rng))
    return asdict(_CFG), weights, prompt, n_new, seed


def _call(student: Student, case):
    return expect_tuple(student.call("greedy_decode", *case[:4]), 2,
                        "greedy_decode should return (new_tokens, positions_processed)")


@decode.check("the greedy tokens", points=2,
              hint="at each step take the argmax of the last position's logits, and feed that token back in")
def _decode_tokens(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        case = _case(rng)
        tokens, _ = _call(student, case)
        want = generate(build_model(_CFG, seed=case[4]), case[2], case[3], temperature=0)[0].tolist()
        tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens
        expect_equal(list(tokens), want, f"greedy_decode(prompt of {len(case[2])} tokens, n_new={case[3]})")


@decode.check("each position is processed once", points=2,
              hint="with a cache, run the prompt once, then only the newest token each step; count the positions you pass to the model")
def _decode_work(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        case = _case(rng)
        _, positions = _call(student, case)
        expect_equal(positions, len(case[2]) + case[3] - 1,
                     f"positions processed for a prompt of {len(case[2])} and {case[3]} new tokens")


roofline = exercise("10.roofline", "the time of one decoding step on the roofline", functions=("step_seconds",),
                    protects=("minimoe.recipe.decode_step", "minimoe.recipe.answer_time"))


def _roofline_case(rng: torch.Generator) -> tuple:
    u = torch.rand(7, generator=rng, dtype=torch.float64).tolist()
    weight_bytes = 10 ** (6 + 6 * u[0])  # 1 MB .. 1 TB
    kv_bytes_per_token = int(10 ** (3 + 2 * u[1]))
    position = int(4000 * u[2])
    batch = [1, 2, 8, 64, 256][int(5 * u[3])]
    flops_per_token = 10 ** (6 + 6 * u[4])
    bandwidth, peak = 10 ** (10 + 2.5 * u[5]), 10 ** (11 + 4 * u[6])
    return weight_bytes, kv_bytes_per_token, position, batch, flops_per_token, bandwidth, peak


def _roofline_want(weight_bytes, kv_bytes_per_token, position, batch, flops_per_token, bandwidth, peak) -> float:
    memory = (weight_bytes + batch * position * kv_bytes_per_token) / bandwidth
    return max(memory, batch * flops_per_token / peak)


@roofline.check("seconds per step, memory-bound and compute-bound", points=2,
                hint="the step reads the weights once and every sequence's cache up to its position; "
                     "the time is the larger of bytes / bandwidth and FLOPs / peak")
def _roofline_cases(student: Student, rng: torch.Generator) -> None:
    for _ in range(12):
        case = _roofline_case(rng)
        want = _roofline_want(*case)
        expect_number(student.call("step_seconds", *case), want, f"step_seconds(batch={case[3]}, position={case[2]})")
    # One step bound by memory (a large model at batch 1), one bound by compute (a small model, a big batch).
    for case in ((2e9, 70272, 0, 1, 7.3e10, 3.35e12, 9.9e14), (1e6, 1000, 100, 512, 1e9, 1e12, 1e12)):
        expect_number(student.call("step_seconds", *case), _roofline_want(*case), f"step_seconds{case}")


votes = exercise("10.majority_vote", "accuracy of a majority vote over sampled answers", functions=("vote_accuracy",),
                 protects=("minimoe.generate.vote_accuracy", "minimoe.generate.majority_vote"))


def _votes_case(rng: torch.Generator) -> tuple[list[list[str]], list[str], int]:
    problems = int(torch.randint(1, 12, (1,), generator=rng))
    m = int(torch.randint(1, 17, (1,), generator=rng))
    answers = [[str(int(v)) for v in torch.randint(0, 3, (m,), generator=rng)] for _ in range(problems)]
    truths = [str(int(v)) for v in torch.randint(0, 3, (problems,), generator=rng)]
    n = int(torch.randint(1, m + 1, (1,), generator=rng))
    return answers, truths, n


@votes.check("disjoint groups of n, ties to the first answer", points=2,
             hint="each problem's m answers make m // n disjoint votes (the first n, the next n, ...); a tie goes "
                  "to the answer that appears first in the group; average over every vote of every problem")
def _votes_cases(student: Student, rng: torch.Generator) -> None:
    for _ in range(10):
        answers, truths, n = _votes_case(rng)
        want = vote_accuracy(answers, truths, n)
        expect_number(student.call("vote_accuracy", answers, truths, n), want,
                      f"vote_accuracy({len(answers)} problems of {len(answers[0])} answers, n={n})", rel=1e-9)
    tie = [["4", "5", "5", "4"], ["7", "7", "7", "1"]]
    expect_number(student.call("vote_accuracy", tie, ["4", "7"], 4), 1.0, "a tie of 4 and 5 goes to the first, 4",
                  rel=1e-9)
    expect_number(student.call("vote_accuracy", tie, ["4", "7"], 3), 0.5, "n=3 of 4 answers: one vote per problem",
                  rel=1e-9)
