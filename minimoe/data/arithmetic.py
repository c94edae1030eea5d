"""Multi-digit addition and multiplication, with the working written out or the answer alone.

Chain of thought (CoT) here means doing the sum the way it is done on paper, one digit at a
time from the right, with every carry written down. Each step is ``x+y+c=ss``: the two digits
(0 once a number has run out), the carry in, and their sum as two digits, whose first digit is
the carry out::

    think 487+356=  ->  7+6+0=13 8+5+1=14 4+3+1=08 > 843

Multiplication multiplies the first number by each digit of the second, right to left (steps
``x*d+c=ss``, ending ``=partial``), sections separated by `` ; ``, then adds the partial
products shifted into place::

    think 47*36=  ->  7*6+0=42 4*6+4=28 =282 ; 7*3+0=21 4*3+2=14 =141 ; 282+1410=1692 > 1692

The direct forms ask ``487+356=`` and want ``843``. Both forms of one pair of numbers are the
same problem (``add:356+487``), so a split never trains on one form and tests on the other.
"""

from __future__ import annotations

import random
import re

from minimoe.data.sample import ANSWER_MARK, Sample

COT_PREFIX = "think "
SECTION = " ; "


def _check_operand(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: got {type(value).__name__}, need a non-negative int")
    if value < 0:
        raise ValueError(f"{name}: got {value}, need a non-negative int")
    return value


def _digits_lsd_first(n: int) -> list[int]:
    return [int(ch) for ch in reversed(str(n))]


def add_cot_completion(a: int, b: int) -> str:
    """The chain-of-thought working of ``a + b``, then `` > `` and the sum."""
    _check_operand("a", a), _check_operand("b", b)
    xs, ys = _digits_lsd_first(a), _digits_lsd_first(b)
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = xs[i] if i < len(xs) else 0
        y = ys[i] if i < len(ys) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return " ".join(steps) + ANSWER_MARK + str(a + b)


def _times_digit(a: int, d: int) -> str:
    """``a * d`` digit by digit: ``x*d+c=ss`` steps, then ``=partial``."""
    steps, carry = [], 0
    for x in _digits_lsd_first(a):
        s = x * d + carry  # at most 9*9+8 = 89: always two digits
        steps.append(f"{x}*{d}+{carry}={s:02d}")
        carry = s // 10
    return " ".join(steps) + f" ={a * d}"


def mul_cot_completion(a: int, b: int) -> str:
    """The chain-of-thought working of ``a * b``: one section per digit of ``b``, then the sum."""
    _check_operand("a", a), _check_operand("b", b)
    sections = [_times_digit(a, d) for d in _digits_lsd_first(b)]
    partials = [a * d * 10**j for j, d in enumerate(_digits_lsd_first(b))]
    if len(partials) > 1:
        adds, total = [], partials[0]
        for p in partials[1:]:
            adds.append(f"{total}+{p}={total + p}")
            total += p
        sections.append(" ".join(adds))
    return SECTION.join(sections) + ANSWER_MARK + str(a * b)


# --- reading the working back (tests and checks verify it; chapter 10 finds where it goes wrong) --

_ADD_STEP = re.compile(r"^(\d)\+(\d)\+(\d)=(\d\d)$")
_MUL_STEP = re.compile(r"^(\d)\*(\d)\+(\d)=(\d\d)$")
_PARTIAL = re.compile(r"^=(\d+)$")
_SUM_STEP = re.compile(r"^(\d+)\+(\d+)=(\d+)$")


def _split_answer(completion: str, what: str) -> tuple[str, str]:
    if not isinstance(completion, str):
        raise TypeError(f"completion: got {type(completion).__name__}, need a str")
    if ANSWER_MARK not in completion:
        raise ValueError(f"completion: {completion!r} has no {ANSWER_MARK!r} before the {what}")
    working, answer = completion.rsplit(ANSWER_MARK, 1)
    if not answer.isdigit():
        raise ValueError(f"completion: the answer {answer!r} is not a number")
    return working, answer


def parse_add_cot(completion: str) -> tuple[list[tuple[int, int, int, int]], str]:
    """``(steps, answer)`` of an addition's working; each step is ``(x, y, carry_in, sum)``.

    Reads the format only; whether the arithmetic is right is for the caller to judge.
    """
    working, answer = _split_answer(completion, "sum")
    steps = []
    for part in working.split(" "):
        m = _ADD_STEP.match(part)
        if not m:
            raise ValueError(f"completion: step {part!r} is not of the form x+y+c=ss")
        steps.append(tuple(int(g) for g in m.groups()))
    return steps, answer


def parse_mul_cot(completion: str) -> tuple[list[tuple[list[tuple[int, int, int, int]], int]],
                                             list[tuple[int, int, int]], str]:
    """``(sections, sums, answer)`` of a multiplication's working.

    ``sections``: per digit of the second number, its steps ``(x, d, carry_in, ss)`` and the
    partial product; ``sums``: the additions ``(running, shifted_partial, result)``.
    """
    working, answer = _split_answer(completion, "product")
    parts = working.split(SECTION)
    sections, sums = [], []
    for k, part in enumerate(parts):
        words = part.split(" ")
        if k == len(parts) - 1 and len(parts) > 1 and _SUM_STEP.match(words[0]):
            for w in words:
                m = _SUM_STEP.match(w)
                if not m:
                    raise ValueError(f"completion: {w!r} is not of the form p+q=r")
                sums.append(tuple(int(g) for g in m.groups()))
            continue
        m = _PARTIAL.match(words[-1])
        if not m:
            raise ValueError(f"completion: section {part!r} does not end with =partial")
        steps = []
        for w in words[:-1]:
            s = _MUL_STEP.match(w)
            if not s:
                raise ValueError(f"completion: step {w!r} is not of the form x*d+c=ss")
            steps.append(tuple(int(g) for g in s.groups()))
        sections.append((steps, int(m.group(1))))
    return sections, sums, answer


# --- generators ------------------------------------------------------------------------------------

def _number(rng: random.Random, digits: int) -> int:
    """A number with exactly ``digits`` digits (0 counts as one digit)."""
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _operands(rng: random.Random, difficulty: int, op: str) -> tuple[int, int]:
    a = _number(rng, difficulty)
    b = _number(rng, rng.randint(1, difficulty)) if op == "*" else rng.randint(0, 10**difficulty - 1)
    return (a, b) if rng.random() < 0.5 else (b, a)


def make_arithmetic(op: str, a: int, b: int, cot: bool) -> Sample:
    """The sample that asks ``a op b`` (``op`` is ``"+"`` or ``"*"``), with the working or direct.

    Its difficulty is the digits of the longer number; its problem key is the same for both
    forms and both orders.
    """
    if op not in ("+", "*"):
        raise ValueError(f"op: got {op!r}, need '+' or '*'")
    _check_operand("a", a), _check_operand("b", b)
    family = "add" if op == "+" else "mul"
    domain = f"{family}_{'cot' if cot else 'direct'}"
    result = a + b if op == "+" else a * b
    if cot:
        completion = add_cot_completion(a, b) if op == "+" else mul_cot_completion(a, b)
    else:
        completion = str(result)
    prompt = f"{COT_PREFIX if cot else ''}{a}{op}{b}="
    lo, hi = sorted((a, b))
    difficulty = max(len(str(a)), len(str(b)))
    return Sample(domain, prompt, completion, str(result), difficulty, f"{family}:{lo}{op}{hi}")


def add_cot(rng: random.Random, difficulty: int) -> Sample:
    """``think a+b=`` -> digit-by-digit working and the sum; ``difficulty`` = digits of the longer number."""
    return make_arithmetic("+", *_operands(rng, difficulty, "+"), cot=True)


def add_direct(rng: random.Random, difficulty: int) -> Sample:
    """``a+b=`` -> the sum alone."""
    return make_arithmetic("+", *_operands(rng, difficulty, "+"), cot=False)


def mul_cot(rng: random.Random, difficulty: int) -> Sample:
    """``think a*b=`` -> partial products digit by digit, their sum, the product."""
    return make_arithmetic("*", *_operands(rng, difficulty, "*"), cot=True)


def mul_direct(rng: random.Random, difficulty: int) -> Sample:
    """``a*b=`` -> the product alone."""
    return make_arithmetic("*", *_operands(rng, difficulty, "*"), cot=False)
