"""String tasks: reverse, sort and copy a word of letters; close an open run of brackets.

Each is its own domain so that experts have something to specialize in: copying needs only
attention to the prompt, reversing reads it backwards, sorting counts letters, and closing
brackets needs a stack. ``difficulty`` is the length of the string in the prompt.
"""

from __future__ import annotations

import random
import string

from minimoe.data.sample import Sample

LETTERS = string.ascii_lowercase
BRACKETS = {"(": ")", "[": "]", "{": "}"}


def _word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(length))


def reverse(rng: random.Random, difficulty: int) -> Sample:
    """``reverse abc`` -> ``cba``."""
    w = _word(rng, difficulty)
    return Sample("reverse", f"reverse {w}", w[::-1], w[::-1], difficulty, f"reverse:{w}")


def sort(rng: random.Random, difficulty: int) -> Sample:
    """``sort dbca`` -> ``abcd``. Words with the same letters are one problem: they share an answer."""
    w = _word(rng, difficulty)
    s = "".join(sorted(w))
    return Sample("sort", f"sort {w}", s, s, difficulty, f"sort:{s}")


def copy(rng: random.Random, difficulty: int) -> Sample:
    """``copy abc`` -> ``abc``."""
    w = _word(rng, difficulty)
    return Sample("copy", f"copy {w}", w, w, difficulty, f"copy:{w}")


def closing_brackets(prefix: str) -> str:
    """The brackets that close ``prefix``, innermost first: ``([{`` -> ``}])``."""
    stack: list[str] = []
    for pos, ch in enumerate(prefix):
        if ch in BRACKETS:
            stack.append(ch)
        elif ch in BRACKETS.values():
            if not stack or BRACKETS[stack[-1]] != ch:
                raise ValueError(f"prefix: {ch!r} at position {pos} of {prefix!r} closes nothing open")
            stack.pop()
        else:
            raise ValueError(f"prefix: {ch!r} at position {pos} is not a bracket, need only ()[]{{}}")
    return "".join(BRACKETS[ch] for ch in reversed(stack))


def brackets(rng: random.Random, difficulty: int) -> Sample:
    """``close ([]{`` -> ``})``: a valid run of ``difficulty`` brackets with at least one left open."""
    stack: list[str] = []
    prefix = []
    for i in range(difficulty):
        last = i == difficulty - 1
        # Close with probability 0.4 when something is open, never emptying the stack on the last step.
        can_close = stack and not (last and len(stack) == 1)
        if can_close and rng.random() < 0.4:
            prefix.append(BRACKETS[stack.pop()])
        else:
            ch = rng.choice("([{")
            stack.append(ch)
            prefix.append(ch)
    p = "".join(prefix)
    answer = closing_brackets(p)
    return Sample("brackets", f"close {p}", answer, answer, difficulty, f"brackets:{p}")
