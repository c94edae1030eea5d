"""The domains of the synthetic batter, in one table, and one way to call any of them.

Each domain is a generator ``(rng, difficulty) -> Sample`` with the difficulties it accepts and
a default range. ``generate`` draws one sample; ``is_correct`` judges a generated completion
against a sample: exact match of the final answer, except for grammar, where any completion
that makes a grammatical sentence is right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from minimoe.data import arithmetic, grammar, strings
from minimoe.data.sample import Sample, extract_answer


@dataclass(frozen=True)
class Domain:
    name: str
    make: Callable[[random.Random, int], Sample]
    difficulty: tuple[int, int]  # the default range, inclusive
    max_difficulty: int
    what: str


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("add_cot", arithmetic.add_cot, (1, 4), 12, "addition, digit by digit with carries"),
    Domain("add_direct", arithmetic.add_direct, (1, 4), 12, "addition, the answer alone"),
    Domain("mul_cot", arithmetic.mul_cot, (1, 3), 6, "multiplication, partial products written out"),
    Domain("mul_direct", arithmetic.mul_direct, (1, 3), 6, "multiplication, the answer alone"),
    Domain("reverse", strings.reverse, (2, 8), 20, "reverse a word"),
    Domain("sort", strings.sort, (2, 8), 20, "sort the letters of a word"),
    Domain("copy", strings.copy, (2, 8), 20, "copy a word"),
    Domain("brackets", strings.brackets, (2, 10), 20, "close the open brackets"),
    Domain("grammar", grammar.grammar, (1, 3), grammar.MAX_DIFFICULTY, "a sentence of a tiny grammar"),
)}
"""Every domain, by name, in a fixed order (``domain_id`` numbers them in this order)."""


def domain(name: str) -> Domain:
    """The domain called ``name``; a ValueError lists the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"domain: got {type(name).__name__}, need a str")
    if name not in DOMAINS:
        raise ValueError(f"domain: got {name!r}, need one of {', '.join(DOMAINS)}")
    return DOMAINS[name]


def domain_id(name: str) -> int:
    """The position of ``name`` in ``DOMAINS`` (a tensor-friendly domain label)."""
    domain(name)
    return list(DOMAINS).index(name)


def check_difficulty(name: str, difficulty: object) -> int:
    d = domain(name)
    if not isinstance(difficulty, int) or isinstance(difficulty, bool):
        raise TypeError(f"difficulty: got {type(difficulty).__name__}, need an int")
    if not 1 <= difficulty <= d.max_difficulty:
        raise ValueError(f"difficulty: got {difficulty} for {name}, need 1 to {d.max_difficulty}")
    return difficulty


def generate(name: str, rng: random.Random | int, difficulty: int | None = None) -> Sample:
    """One sample of domain ``name``, drawn with ``rng`` (a ``random.Random`` or a seed).

    ``difficulty=None`` draws one from the domain's default range.
    """
    d = domain(name)
    if isinstance(rng, int) and not isinstance(rng, bool):
        rng = random.Random(rng)
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng: got {type(rng).__name__}, need a random.Random or an int seed")
    if difficulty is None:
        difficulty = rng.randint(*d.difficulty)
    return d.make(rng, check_difficulty(name, difficulty))


def is_correct(sample: Sample, completion: str) -> bool:
    """Whether a generated ``completion`` answers ``sample``: exact match of the final answer.

    Grammar has many right completions, so there the whole sentence must parse instead.
    """
    if not isinstance(sample, Sample):
        raise TypeError(f"sample: got {type(sample).__name__}, need a Sample")
    answer = extract_answer(completion)
    if sample.domain == "grammar":
        return grammar.is_sentence(f"{sample.prompt} {answer}")
    return answer == sample.answer
