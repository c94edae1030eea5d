"""The batter: a seeded mixture of domains, split into train / validation / test by problem.

A split by position (first 80% of a list for training) leaks: ``12+34`` can sit at position 5
and again at position 9,000, and ``think 12+34`` asks the same thing as ``34+12``. Here each
sample's ``problem`` key is hashed with the seed into a number in [0, 1), and that number
alone picks the split, so every way of asking one problem lands in the same split, whatever
its position, whichever list it is in.

``sign_answers`` shows the identity-contamination hazard in miniature: a model trained on
another model's outputs also learns that model's habits, its name included.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

from minimoe.data.sample import SIGNATURE_MARK, Sample
from minimoe.data.tasks import DOMAINS, check_difficulty, domain

SPLITS = ("train", "val", "test")


def _check_fractions(fractions: object) -> tuple[float, ...]:
    if not isinstance(fractions, (list, tuple)) or not fractions:
        raise TypeError(f"fractions: got {type(fractions).__name__}, need a list or tuple of numbers")
    for f in fractions:
        if not isinstance(f, (int, float)) or isinstance(f, bool):
            raise TypeError(f"fractions: got {f!r} ({type(f).__name__}), need numbers")
        if not f >= 0:
            raise ValueError(f"fractions: got {list(fractions)}, need every fraction >= 0")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions: got {list(fractions)} (sum {sum(fractions):.4g}), need a sum of 1")
    return tuple(float(f) for f in fractions)


def problem_hash(problem: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``problem`` and ``seed`` alone (SHA-256, not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}\x00{problem}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_index(problem: str, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> int:
    """Which split ``problem`` belongs to: the index ``i`` whose share of [0, 1) holds its hash."""
    if not isinstance(problem, str):
        raise TypeError(f"problem: got {type(problem).__name__}, need a str")
    return _split_index(problem, seed, _check_fractions(fractions))


def _split_index(problem: str, seed: int, fractions: tuple[float, ...]) -> int:
    u, edge = problem_hash(problem, seed), 0.0
    for i, f in enumerate(fractions):
        edge += f
        if u < edge and f > 0:
            return i
    return max(i for i, f in enumerate(fractions) if f > 0)  # u just under 1 when the sum rounds low


def _check_weights(weights: object) -> dict[str, float]:
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights: got {type(weights).__name__}, need a dict of domain -> weight")
    out = {}
    for name, w in weights.items():
        domain(name)  # a ValueError names an unknown domain
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise TypeError(f"weights: {name} got {w!r} ({type(w).__name__}), need a number")
        if not w >= 0:
            raise ValueError(f"weights: {name} got {w}, need a weight >= 0")
        out[name] = float(w)
    if not out or sum(out.values()) <= 0:
        raise ValueError(f"weights: got {dict(weights)}, need at least one positive weight")
    return out


class Mixture:
    """Samples from several domains, in proportion to ``weights``, deterministic given ``seed``.

    ``weights``: domain -> weight, a share of *samples* (``None``: every domain equally).
    ``fractions``: the train / val / test shares of problems.
    ``difficulty``: domain -> (lowest, highest) to override a domain's default range.
    """

    def __init__(self, weights: Mapping[str, float] | None = None, *, seed: int = 0,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 difficulty: Mapping[str, tuple[int, int]] | None = None, max_tries: int = 10_000):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: got {type(seed).__name__}, need an int")
        self.weights = _check_weights({name: 1.0 for name in DOMAINS} if weights is None else weights)
        self.seed = seed
        self.fractions = _check_fractions(fractions)
        if len(self.fractions) != len(SPLITS):
            raise ValueError(f"fractions: got {len(self.fractions)} of them, need {len(SPLITS)} (train, val, test)")
        self.difficulty = {name: DOMAINS[name].difficulty for name in self.weights}
        for name, rng_ in (difficulty or {}).items():
            if name not in self.weights:
                domain(name)
                raise ValueError(f"difficulty: {name} has no weight in this mixture")
            if not isinstance(rng_, (tuple, list)) or len(rng_) != 2:
                raise TypeError(f"difficulty: {name} got {rng_!r}, need (lowest, highest)")
            lo, hi = (check_difficulty(name, v) for v in rng_)
            if lo > hi:
                raise ValueError(f"difficulty: {name} got ({lo}, {hi}), need lowest <= highest")
            self.difficulty[name] = (lo, hi)
        if not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries: got {max_tries!r}, need an int >= 1")
        self.max_tries = max_tries

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}: {v:g}" for k, v in self.weights.items() if v > 0)
        return f"Mixture({{{shown}}}, seed={self.seed}, fractions={self.fractions})"

    def split_of(self, sample: Sample | str) -> str:
        """The split (``"train"``, ``"val"`` or ``"test"``) of a sample or of a problem key."""
        problem = sample.problem if isinstance(sample, Sample) else sample
        if not isinstance(problem, str):
            raise TypeError(f"sample: got {type(problem).__name__}, need a Sample or a problem key (str)")
        return SPLITS[_split_index(problem, self.seed, self.fractions)]

    def sample(self, n: int, split: str = "train") -> list[Sample]:
        """``n`` samples of ``split``; the first ``k`` of ``sample(n)`` are ``sample(k)``."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n: got {n!r}, need an int >= 0")
        if split not in SPLITS:
            raise ValueError(f"split: got {split!r}, need one of {', '.join(SPLITS)}")
        if self.fractions[SPLITS.index(split)] == 0 and n > 0:
            raise ValueError(f"split: {split!r} has fraction 0 in this mixture, so it holds no problems")
        rng = random.Random(f"minimoe.data.mixture/{self.seed}/{split}")
        names = [k for k, w in self.weights.items() if w > 0]
        weights = [self.weights[k] for k in names]
        out = []
        for _ in range(n):
            name = rng.choices(names, weights)[0]
            make, (lo, hi) = DOMAINS[name].make, self.difficulty[name]
            for _ in range(self.max_tries):
                s = make(rng, rng.randint(lo, hi))
                if self.split_of(s) == split:
                    out.append(s)
                    break
            else:
                raise ValueError(f"split: found no {name} problem for {split!r} in {self.max_tries} tries; "
                                 f"its difficulty range {(lo, hi)} holds too few problems to hold any out")
        return out

    def splits(self, n_train: int, n_val: int = 0, n_test: int = 0) -> dict[str, list[Sample]]:
        """``{"train": [...], "val": [...], "test": [...]}``, no problem in two of them."""
        return {"train": self.sample(n_train, "train"), "val": self.sample(n_val, "val"),
                "test": self.sample(n_test, "test")}


def sign_answers(samples: Sequence[Sample], signer: str = "TeacherBot", fraction: float = 0.3,
                 seed: int = 0) -> list[Sample]:
    """A copy of ``samples`` in which a ``fraction`` of completions end ``-- answered by {signer}``.

    This is data distilled from a teacher model that signs its work. The final answers stay the
    same (``extract_answer`` stops at the signature); what a model learns from it does not.
    """
    if not isinstance(signer, str) or not signer or "\n" in signer or SIGNATURE_MARK in signer:
        raise ValueError(f"signer: got {signer!r}, need a non-empty name on one line")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction: got {fraction!r}, need a number in [0, 1]")
    rng = random.Random(f"minimoe.data.sign/{seed}")
    out = []
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"samples: got a {type(s).__name__}, need Samples")
        if rng.random() < fraction:
            s = Sample(s.domain, s.prompt, f"{s.completion}{SIGNATURE_MARK}answered by {signer}",
                       s.answer, s.difficulty, s.problem)
        out.append(s)
    return out


def count_tokens(samples: Sequence[Sample]) -> int:
    """Tokens in ``samples``: each is BOS, prompt, SEP, completion, EOS."""
    return sum(len(s) for s in samples)


def tokens_by_domain(samples: Sequence[Sample]) -> dict[str, int]:
    """Tokens per domain, in ``DOMAINS`` order, for the domains present."""
    counts = {name: 0 for name in DOMAINS}
    for s in samples:
        counts[s.domain] += len(s)
    return {k: v for k, v in counts.items() if v}
