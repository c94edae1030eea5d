"""Exact-match accuracy of generated answers, per domain and per difficulty.

The evaluator knows nothing about models: it takes any callable that maps a list of prompts to
a list of completions. Chapter 03 plugs a trained model in; here a few lines of Python stand in
for one. A completion counts as correct when its final answer (``extract_answer``: after the
last `` > ``, before any signature) equals the sample's; for grammar, when prompt and
completion make a sentence of the grammar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from minimoe.data.sample import Sample
from minimoe.data.tasks import DOMAINS, is_correct

AnswerFn = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Graded:
    """One sample, what was generated for it, and the verdict."""

    sample: Sample
    completion: str
    correct: bool


@dataclass(frozen=True)
class Row:
    """The results of one (domain, difficulty) cell."""

    domain: str
    difficulty: int
    n: int
    correct: int
    mean_tokens: float  # characters (= tokens) in the generated completions, on average

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


class EvalReport:
    """Every graded sample, with accuracy by domain, by difficulty, or both."""

    def __init__(self, graded: list[Graded]):
        self.graded = graded

    def _select(self, domain: str | None, difficulty: int | None) -> list[Graded]:
        return [g for g in self.graded
                if (domain is None or g.sample.domain == domain)
                and (difficulty is None or g.sample.difficulty == difficulty)]

    def accuracy(self, domain: str | None = None, difficulty: int | None = None) -> float:
        """The share answered right, over everything or one domain and/or difficulty."""
        chosen = self._select(domain, difficulty)
        if not chosen:
            raise ValueError(f"domain, difficulty: got ({domain!r}, {difficulty!r}), which no evaluated sample has")
        return sum(g.correct for g in chosen) / len(chosen)

    def by_domain(self) -> dict[str, float]:
        """Accuracy per domain present, in ``DOMAINS`` order."""
        present = {g.sample.domain for g in self.graded}
        return {d: self.accuracy(d) for d in DOMAINS if d in present}

    def rows(self) -> list[Row]:
        """One row per (domain, difficulty) present, in ``DOMAINS`` order, then by difficulty."""
        cells: dict[tuple[str, int], list[Graded]] = {}
        for g in self.graded:
            cells.setdefault((g.sample.domain, g.sample.difficulty), []).append(g)
        order = list(DOMAINS)
        out = []
        for (d, k), gs in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
            out.append(Row(d, k, len(gs), sum(g.correct for g in gs),
                           sum(len(g.completion) for g in gs) / len(gs)))
        return out

    def table(self, counts: bool = False) -> str:
        """Accuracy per domain (rows) and difficulty (columns), as text; ``-`` where nothing was asked.

        ``counts=True`` shows each cell as ``correct/asked`` instead of a percentage, so that a
        100% of 1 problem is not mistaken for a 100% of 50.
        """
        if not isinstance(counts, bool):
            raise TypeError(f"counts: got {type(counts).__name__}, need a bool")
        rows = self.rows()
        levels = sorted({r.difficulty for r in rows})
        cell = {(r.domain, r.difficulty): (f"{r.correct}/{r.n}" if counts else f"{r.accuracy:.0%}") for r in rows}
        overall = {d: f"{a:.0%}" for d, a in self.by_domain().items()}
        if counts:
            for d in overall:
                chosen = self._select(d, None)
                overall[d] += f" of {len(chosen)}"
        width = max(len("domain"), *(len(d) for d in overall))
        w_all = max(5, *(len(v) for v in overall.values()))
        w_cell = max(5, *(len(v) for v in cell.values()))
        head = f"{'domain':<{width}}  {'all':>{w_all}}  " + "  ".join(f"{k:>{w_cell}}" for k in levels)
        lines = [head]
        for d, a in overall.items():
            cells = "  ".join(f"{cell.get((d, k), '-'):>{w_cell}}" for k in levels)
            lines.append(f"{d:<{width}}  {a:>{w_all}}  {cells}")
        return "\n".join(lines)


def evaluate(answer_fn: AnswerFn, samples: Sequence[Sample], batch_size: int = 256) -> EvalReport:
    """Ask ``answer_fn`` every prompt of ``samples`` (``batch_size`` at a time) and grade the answers."""
    if not callable(answer_fn):
        raise TypeError(f"answer_fn: got {type(answer_fn).__name__}, need a function list[str] -> list[str]")
    if not isinstance(samples, Sequence) or not samples:
        raise ValueError("samples: need a non-empty list of Samples")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}, need an int >= 1")
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"samples: got a {type(s).__name__}, need Samples")
    graded = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        completions = answer_fn([s.prompt for s in chunk])
        if not isinstance(completions, (list, tuple)) or len(completions) != len(chunk):
            got = f"{len(completions)} items" if isinstance(completions, (list, tuple)) else type(completions).__name__
            raise ValueError(f"answer_fn: returned {got} for {len(chunk)} prompts, need a list of one string per prompt")
        for s, c in zip(chunk, completions):
            if not isinstance(c, str):
                raise TypeError(f"answer_fn: returned a {type(c).__name__} for {s.prompt!r}, need a str")
            graded.append(Graded(s, c, is_correct(s, c)))
    return EvalReport(graded)
