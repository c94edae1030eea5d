"""Chapter 02's exercises: encode and decode text; write chain-of-thought addition; split by problem."""

from __future__ import annotations

from collections import Counter

import torch

from minimoe.data.arithmetic import add_cot_completion, parse_add_cot
from minimoe.data.sample import ANSWER_MARK
from minimoe.data.tokenizer import DEFAULT_CHARS, SPECIAL_GLYPHS
from minimoe.grading.registry import Student, StudentError, exercise, expect_equal

# --- 02.tokenizer ----------------------------------------------------------------------------------

tokenizer = exercise(
    "02.tokenizer",
    "encode text to token ids and decode them back",
    functions=("encode", "decode"),
    protects=("minimoe.data.tokenizer.CharTokenizer.encode", "minimoe.data.tokenizer.CharTokenizer.decode"),
)


def _pick(rng: torch.Generator, n: int) -> int:
    return int(torch.randint(0, n, (1,), generator=rng))


def _vocab(rng: torch.Generator, size: int = 40) -> str:
    """A random vocabulary: the special glyphs, then ``size`` printable characters in random order."""
    chars = DEFAULT_CHARS[1:]  # printable ASCII
    order = torch.randperm(len(chars), generator=rng)[:size].tolist()
    return SPECIAL_GLYPHS + "".join(chars[i] for i in order)


def _text(rng: torch.Generator, vocab: str, length: int) -> str:
    return "".join(vocab[_pick(rng, len(vocab))] for _ in range(length))


def _as_ints(got: object, what: str) -> list[int]:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in got):
        raise AssertionError(f"{what}: expected a list of ints, got {type(got).__name__}")
    return list(got)


@tokenizer.check("encode gives each character its id", points=1,
                 hint="a character's id is its position in `vocab`; build the lookup table once, not per character")
def _encode(student: Student, rng: torch.Generator) -> None:
    for length in (0, 1, 17, 200):
        vocab = _vocab(rng)
        text = _text(rng, vocab, length)
        want = [vocab.index(ch) for ch in text]
        got = _as_ints(student.call("encode", text, vocab), f"encode({text[:20]!r}..., vocab)")
        if len(got) != len(want):
            raise AssertionError(f"encode(a text of {len(text)} characters, vocab): expected {len(want)} ids, got {len(got)}")
        for pos, (g, w) in enumerate(zip(got, want)):
            if g != w:
                raise AssertionError(f"encode(text, vocab): character {text[pos]!r} at position {pos} got id {g}, "
                                     f"expected {w}")


@tokenizer.check("decode turns ids back into the same text", points=1,
                 hint="the token with id i is vocab[i]; join the characters into one string")
def _decode(student: Student, rng: torch.Generator) -> None:
    for length in (0, 1, 23, 200):
        vocab = _vocab(rng)
        ids = [_pick(rng, len(vocab)) for _ in range(length)]
        want = "".join(vocab[i] for i in ids)
        got = student.call("decode", ids, vocab)
        if not isinstance(got, str):
            raise AssertionError(f"decode(ids, vocab): expected a str, got {type(got).__name__}")
        expect_equal(got, want, f"decode({ids[:10]}..., vocab)")
        text = _text(rng, vocab, length)
        expect_equal(student.call("decode", student.call("encode", text, vocab), vocab), text,
                     f"decode(encode({text!r}))")


@tokenizer.check("a character outside the vocabulary is a ValueError that names it", points=1,
                 hint="check each character before looking it up, and put the character itself in the message")
def _unknown(student: Student, rng: torch.Generator) -> None:
    vocab = _vocab(rng, size=30)
    outside = "éß€ñ¿λ"  # never in an ASCII vocabulary, and never in an English error message by chance
    for _ in range(3):
        bad = outside[_pick(rng, len(outside))]
        text = _text(rng, vocab, 5) + bad + _text(rng, vocab, 5)
        try:
            got = student.call("encode", text, vocab)
        except StudentError as e:
            message = str(e)
            if "raised ValueError" not in message:
                raise AssertionError(f"encode({text!r}, vocab) with {bad!r} outside vocab: expected a ValueError, "
                                     f"got: {message}") from None
            if bad not in message.split("raised ValueError", 1)[1]:
                raise AssertionError(f"encode({text!r}, vocab): the ValueError does not name {bad!r}: {message}") from None
        else:
            raise AssertionError(f"encode({text!r}, vocab) with {bad!r} outside vocab returned {got!r} "
                                 "instead of raising ValueError")


# --- 02.add_cot ------------------------------------------------------------------------------------

add_cot = exercise(
    "02.add_cot",
    "chain-of-thought addition, digit by digit with carries",
    functions=("add_cot",),
    protects=("minimoe.data.arithmetic.add_cot_completion",),
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
    protects=("minimoe.data.mixture.split_index", "minimoe.data.mixture.problem_hash"),
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
