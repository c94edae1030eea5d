"""Chapter 02's exercises: byte-pair merges; write chain-of-thought addition; split by problem."""

from __future__ import annotations

from collections import Counter

import torch

from minimoe.data.arithmetic import add_cot_completion, parse_add_cot
from minimoe.data.sample import ANSWER_MARK
from minimoe.grading.registry import Student, exercise, expect_equal

# --- 02.bpe ---------------------------------------------------------------------------------------
# Byte-pair encoding (Sennrich et al., arXiv 1508.07909): count adjacent pairs, merge the commonest.

bpe = exercise(
    "02.bpe",
    "byte-pair merges: the sub-word tokens of real tokenizers",
    functions=("most_frequent_pair", "merge"),
)


def _pick(rng: torch.Generator, n: int) -> int:
    return int(torch.randint(0, n, (1,), generator=rng))


def _as_ints(got: object, what: str) -> list[int]:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in got):
        raise AssertionError(f"{what}: expected a list of ints, got {type(got).__name__}")
    return list(got)


def _most_frequent_pair(ids: list[int]) -> tuple[int, int] | None:
    """Reference: the commonest adjacent pair (every position counts), ties to the earliest first occurrence."""
    counts = Counter(zip(ids, ids[1:]))  # Counter keeps first-seen order, and max() keeps the first of equals
    return max(counts, key=counts.get) if counts else None


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pair(got: object, what: str) -> tuple[int, int] | None:
    if got is None:
        return None
    ints = _as_ints(got, what)
    if len(ints) != 2:
        raise AssertionError(f"{what}: expected a pair (a, b), got {len(ints)} ids")
    return tuple(ints)


def _ids(rng: torch.Generator, n: int, alphabet: int) -> list[int]:
    return torch.randint(0, alphabet, (n,), generator=rng).tolist()


@bpe.check("most_frequent_pair counts every adjacent pair", points=1,
           hint="count (ids[i], ids[i + 1]) for every i, overlapping ones too: [7, 7, 7] holds (7, 7) twice")
def _pair_counts(student: Student, rng: torch.Generator) -> None:
    cases = [[7, 7, 7, 1, 2, 1, 2, 7, 7]]  # (7, 7) three times, overlapping, (1, 2) twice
    for _ in range(4):
        ids = _ids(rng, 20 + _pick(rng, 200), 4 + _pick(rng, 6))
        if _most_frequent_pair(ids) is not None:
            cases.append(ids)
    for ids in cases:
        want = _most_frequent_pair(ids)
        counts = Counter(zip(ids, ids[1:]))
        got = _pair(student.call("most_frequent_pair", ids), f"most_frequent_pair({ids[:8]}...)")
        if got is None or counts.get(got, 0) != counts[want]:
            raise AssertionError(f"most_frequent_pair({ids[:12]}{'...' if len(ids) > 12 else ''}): got {got}, seen "
                                 f"{counts.get(got, 0) if got else 0} times; the commonest pair is seen {counts[want]} times")


@bpe.check("ties go to the pair seen first; fewer than two ids have no pair", points=1,
           hint="among pairs seen equally often, return the one whose first occurrence comes earliest; "
                "return None for [] and for a single id")
def _pair_ties(student: Student, rng: torch.Generator) -> None:
    a, b, c, d = torch.randperm(50, generator=rng)[:4].tolist()
    for ids in ([a, b, c, d, c, d, a, b], [c, d, a, b, a, b, c, d], [a, b, c, d]):
        expect_equal(_pair(student.call("most_frequent_pair", ids), "most_frequent_pair"), _most_frequent_pair(ids),
                     f"most_frequent_pair({ids})")
    for ids in ([], [a]):
        expect_equal(student.call("most_frequent_pair", ids), None, f"most_frequent_pair({ids})")


@bpe.check("merge replaces the pair left to right, without overlaps", points=1,
           hint="walk left to right; where ids[i], ids[i + 1] is the pair, write new_id and skip both: "
                "[7, 7, 7] with (7, 7) becomes [new_id, 7]")
def _merges(student: Student, rng: torch.Generator) -> None:
    cases = [([7, 7, 7], (7, 7)), ([7, 7, 7, 7], (7, 7)), ([1, 2, 3], (3, 1)), ([], (1, 2)), ([5], (5, 5))]
    for _ in range(4):
        ids = _ids(rng, 10 + _pick(rng, 100), 3 + _pick(rng, 4))
        cases.append((ids, (ids[_pick(rng, len(ids) - 1)], ids[_pick(rng, len(ids))])))
    for ids, pair in cases:
        new_id = 100 + _pick(rng, 900)
        got = _as_ints(student.call("merge", ids, pair, new_id), f"merge({ids[:8]}, {pair}, {new_id})")
        expect_equal(got, _merge(ids, pair, new_id), f"merge({ids[:12]}{'...' if len(ids) > 12 else ''}, {pair}, {new_id})")


@bpe.check("ten merges on real text", points=1,
           hint="use your two functions in turn, ten times, each new token numbered one past the last; "
                "the text gets shorter at every merge")
def _train(student: Student, rng: torch.Generator) -> None:
    from minimoe.data import Mixture, TOKENIZER

    text = " ".join(s.prompt + " " + s.completion for s in Mixture({"grammar": 1}, seed=_pick(rng, 10_000)).sample(30))
    theirs = mine = TOKENIZER.encode(text)
    for step in range(10):
        new_id = TOKENIZER.vocab_size + step
        want_pair = _most_frequent_pair(mine)
        got_pair = _pair(student.call("most_frequent_pair", theirs), f"merge {step + 1}: most_frequent_pair")
        expect_equal(got_pair, want_pair, f"merge {step + 1} on a text of {len(mine)} tokens: the pair")
        mine = _merge(mine, want_pair, new_id)
        theirs = _as_ints(student.call("merge", theirs, got_pair, new_id), f"merge {step + 1}: merge")
        if theirs != mine:
            raise AssertionError(f"merge {step + 1}: the text has {len(theirs)} tokens, expected {len(mine)}")


# --- 02.add_cot ------------------------------------------------------------------------------------

add_cot = exercise(
    "02.add_cot",
    "chain-of-thought addition, digit by digit with carries",
    functions=("add_cot",),
    protects=("minimoe.data.arithmetic.add_cot_completion", "minimoe.data.arithmetic.make_arithmetic"),
)


def _number(rng: torch.Generator, digits: int) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return lo + _pick(rng, 10**digits - lo)


def _pairs(rng: torch.Generator, n: int = 30) -> list[tuple[int, int]]:
    return [(_number(rng, 1 + _pick(rng, 7)), _number(rng, 1 + _pick(rng, 7))) for _ in range(n)]


def _working(student: Student, a: int, b: int) -> str:
    got = student.call("add_cot", a, b)
    if not isinstance(got, str):
        raise AssertionError(f"add_cot({a}, {b}): expected a str, got {type(got).__name__}")
    return got


@add_cot.check("the final answer is the sum", points=1,
               hint=f"end the working with {ANSWER_MARK!r} and the sum, and let no final carry go missing")
def _final(student: Student, rng: torch.Generator) -> None:
    for a, b in _pairs(rng):
        got = _working(student, a, b)
        if ANSWER_MARK not in got:
            raise AssertionError(f"add_cot({a}, {b}) = {got!r}: no {ANSWER_MARK!r} before the answer")
        expect_equal(got.rsplit(ANSWER_MARK, 1)[1], str(a + b), f"the answer of add_cot({a}, {b})")


@add_cot.check("one step per digit, each carry passed on", points=2,
               hint="walk the digits from the right, 0 where a number has run out; "
                    "the carry into a step is the first digit of the previous step's two-digit sum")
def _steps(student: Student, rng: torch.Generator) -> None:
    for a, b in _pairs(rng):
        got = _working(student, a, b)
        try:
            steps, _ = parse_add_cot(got)
        except ValueError as e:
            raise AssertionError(f"add_cot({a}, {b}) = {got!r}: {e}") from None
        xs, ys = str(a)[::-1], str(b)[::-1]
        n = max(len(xs), len(ys))
        if len(steps) != n:
            raise AssertionError(f"add_cot({a}, {b}) = {got!r}: expected {n} steps, one per digit, got {len(steps)}")
        carry = 0
        for i, (x, y, c, s) in enumerate(steps):
            want_x = int(xs[i]) if i < len(xs) else 0
            want_y = int(ys[i]) if i < len(ys) else 0
            if (x, y) != (want_x, want_y):
                raise AssertionError(f"add_cot({a}, {b}), step {i + 1}: adds digits {x} and {y}, "
                                     f"expected {want_x} and {want_y}")
            if c != carry:
                raise AssertionError(f"add_cot({a}, {b}), step {i + 1}: carry in {c}, expected {carry}")
            if s != x + y + c:
                raise AssertionError(f"add_cot({a}, {b}), step {i + 1}: {x}+{y}+{c} is not {s}")
            carry = s // 10


@add_cot.check("edge cases: zeros, unequal lengths, a carry out of the top", points=1,
               hint="write every sum with two digits (08, not 8) and compare your text with the example character by character")
def _edges(student: Student, rng: torch.Generator) -> None:
    k = _number(rng, 3)
    for a, b in [(0, 0), (7, 0), (5, 12345), (999, 1), (99999, 99999), (10, 90), (k, 10**6 - k)]:
        expect_equal(_working(student, a, b), add_cot_completion(a, b), f"add_cot({a}, {b})")


# --- 02.split --------------------------------------------------------------------------------------

split = exercise(
    "02.split",
    "a train / validation / test split with no problem in two splits",
    functions=("split_by_problem",),
    protects=("minimoe.data.mixture.split_index", "minimoe.data.mixture.problem_hash", "minimoe.data.mixture._split_index"),
)


def _problems(rng: torch.Generator, n: int) -> list[str]:
    """``n`` distinct problem keys, like the mixture's."""
    out: set[str] = set()
    while len(out) < n:
        a, b = sorted((_number(rng, 1 + _pick(rng, 4)), _number(rng, 1 + _pick(rng, 4))))
        out.add(f"add:{a}+{b}")
    return sorted(out)


def _assign(student: Student, problems: list[str], fractions: list[float], seed: int) -> list[int]:
    got = _as_ints(student.call("split_by_problem", problems, fractions, seed),
                   f"split_by_problem({len(problems)} problems, {fractions}, seed={seed})")
    if len(got) != len(problems):
        raise AssertionError(f"split_by_problem: expected one split per item ({len(problems)}), got {len(got)}")
    bad = [i for i in got if not 0 <= i < len(fractions)]
    if bad:
        raise AssertionError(f"split_by_problem: got split {bad[0]}, expected 0 to {len(fractions) - 1}")
    return got


def _shuffled(rng: torch.Generator, items: list[str]) -> list[str]:
    return [items[i] for i in torch.randperm(len(items), generator=rng).tolist()]


@split.check("one split per problem, however often it appears", points=2,
             hint="decide a split for each distinct problem, not for each position in the list")
def _no_leak(student: Student, rng: torch.Generator) -> None:
    distinct = _problems(rng, 500)
    items = _shuffled(rng, [distinct[_pick(rng, len(distinct))] for _ in range(3000)])
    seed = _pick(rng, 1000)
    got = _assign(student, items, [0.8, 0.1, 0.1], seed)
    seen: dict[str, int] = {}
    for p, s in zip(items, got):
        if seen.setdefault(p, s) != s:
            raise AssertionError(f"split_by_problem: {p!r} appears in split {seen[p]} and in split {s}")


@split.check("split sizes follow the fractions", points=1,
             hint="each distinct problem should land in split i with probability fractions[i]; a split with fraction 0 gets none")
def _sizes(student: Student, rng: torch.Generator) -> None:
    distinct = _problems(rng, 4000)
    for fractions in ([0.8, 0.1, 0.1], [0.5, 0.0, 0.5], [0.6, 0.4], [1.0, 0.0, 0.0]):
        got = _assign(student, distinct, fractions, _pick(rng, 1000))
        counts = Counter(got)
        for i, f in enumerate(fractions):
            share = counts.get(i, 0) / len(distinct)
            if (f == 0 and share > 0) or abs(share - f) > 0.03:
                raise AssertionError(f"split_by_problem(4000 distinct problems, {fractions}): split {i} got "
                                     f"{share:.3f} of them, expected {f} (within 0.03)")


@split.check("the split depends on the problem and the seed, not on the position", points=1,
             hint="the same list in another order must give each problem the same split; another seed should move some problems")
def _stable(student: Student, rng: torch.Generator) -> None:
    distinct = _problems(rng, 1000)
    seed = _pick(rng, 1000)
    first = dict(zip(distinct, _assign(student, distinct, [0.8, 0.1, 0.1], seed)))
    again = _shuffled(rng, distinct)
    second = dict(zip(again, _assign(student, again, [0.8, 0.1, 0.1], seed)))
    moved = [p for p in distinct if first[p] != second[p]]
    if moved:
        raise AssertionError(f"split_by_problem: {moved[0]!r} went to split {first[moved[0]]}, then to split "
                             f"{second[moved[0]]} when the list was shuffled (same seed)")
    other = dict(zip(distinct, _assign(student, distinct, [0.8, 0.1, 0.1], seed + 1)))
    if sum(first[p] != other[p] for p in distinct) < 50:
        raise AssertionError("split_by_problem: seed and seed + 1 give almost the same split; the seed must matter")
