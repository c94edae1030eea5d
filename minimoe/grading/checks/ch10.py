"""Chapter 10's exercises: greedy decoding with a KV cache; what an answer costs."""

from __future__ import annotations

from dataclasses import asdict

import torch

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.generate import generate
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


cost = exercise("10.answer_cost", "what an answer costs", functions=("answer_cost",),
    protects=("minimoe.recipe.answer_cost", "minimoe.recipe.inference_flops_per_token"))


@cost.check("FLOPs and dollars per answer", points=2,
            hint="2 FLOPs per activated parameter per generated token; time = FLOPs / (peak x MFU); dollars = hours x price")
def _cost(student: Student, rng: torch.Generator) -> None:
    for _ in range(5):
        u = torch.rand(4, generator=rng, dtype=torch.float64).tolist()
        n_active, n_tokens = 10 ** (8 + 3 * u[0]), int(1 + 5000 * u[1])
        mfu, price = 0.05 + 0.9 * u[2], 0.5 + 5 * u[3]
        want = recipe.answer_cost(n_active, n_tokens, 989.4e12, mfu, price)
        flops, dollars = expect_tuple(student.call("answer_cost", n_active, n_tokens, 989.4e12, mfu, price), 2,
                                      "answer_cost should return (flops, dollars)")
        expect_number(flops, want.flops, "flops")
        expect_number(dollars, want.dollars, "dollars")
