"""A tiny grammar of English sentences, so that the batter holds some prose.

A sentence is a subject, a verb that agrees with it in number, maybe an object, maybe a place::

    sentence := NP VP "."          NP := det [adj] noun
    VP := Vi [PP] | Vt NP [PP]     PP := prep NP

``difficulty`` is the number of noun phrases (1 to 3). The prompt is the subject; the
completion is the rest. Many completions are right for one subject, so the evaluator counts a
generated completion as correct when the whole sentence is in the grammar (``is_sentence``):
the verb must agree with the subject ("the cats sleep", "a cat sleeps").
"""

from __future__ import annotations

import random

from minimoe.data.sample import Sample

DETERMINERS = {"sg": ("the", "a", "one"), "pl": ("the", "two", "some")}
ADJECTIVES = ("small", "big", "red", "old", "quiet", "happy")
NOUNS = {"cat": "cats", "dog": "dogs", "bird": "birds", "fox": "foxes", "child": "children",
         "robot": "robots", "mouse": "mice"}
INTRANSITIVE = {"sleeps": "sleep", "runs": "run", "sings": "sing", "waits": "wait"}
TRANSITIVE = {"sees": "see", "likes": "like", "chases": "chase", "follows": "follow", "helps": "help"}
PREPOSITIONS = ("near", "under", "behind")
MAX_DIFFICULTY = 3


def _np(rng: random.Random) -> tuple[str, str]:
    number = rng.choice(("sg", "pl"))
    noun = rng.choice(tuple(NOUNS))
    words = [rng.choice(DETERMINERS[number])]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(noun if number == "sg" else NOUNS[noun])
    return " ".join(words), number


def _verb(rng: random.Random, table: dict[str, str], number: str) -> str:
    sg = rng.choice(tuple(table))
    return sg if number == "sg" else table[sg]


def grammar(rng: random.Random, difficulty: int) -> Sample:
    """A sentence with ``difficulty`` noun phrases; the prompt is its subject."""
    subject, number = _np(rng)
    if difficulty == 1:
        rest = [_verb(rng, INTRANSITIVE, number)]
    elif difficulty == 2 and rng.random() < 0.5:
        rest = [_verb(rng, INTRANSITIVE, number), rng.choice(PREPOSITIONS), _np(rng)[0]]
    else:
        rest = [_verb(rng, TRANSITIVE, number), _np(rng)[0]]
        if difficulty == 3:
            rest += [rng.choice(PREPOSITIONS), _np(rng)[0]]
    completion = " ".join(rest) + "."
    sentence = f"{subject} {completion}"
    return Sample("grammar", subject, completion, completion, difficulty, f"grammar:{sentence}")


# --- the recognizer --------------------------------------------------------------------------------

_NOUN_NUMBER = {**{sg: "sg" for sg in NOUNS}, **{pl: "pl" for pl in NOUNS.values()}}
_VI = {**{v: "sg" for v in INTRANSITIVE}, **{v: "pl" for v in INTRANSITIVE.values()}}
_VT = {**{v: "sg" for v in TRANSITIVE}, **{v: "pl" for v in TRANSITIVE.values()}}


def _parse_np(words: list[str], i: int) -> tuple[int, str] | None:
    """Parse a noun phrase at ``words[i]``; return (next index, number) or None."""
    if i >= len(words):
        return None
    det = words[i]
    i += 1
    if i < len(words) and words[i] in ADJECTIVES:
        i += 1
    if i >= len(words) or words[i] not in _NOUN_NUMBER:
        return None
    number = _NOUN_NUMBER[words[i]]
    if det not in DETERMINERS[number]:
        return None
    return i + 1, number


def is_sentence(text: str) -> bool:
    """Whether ``text`` is a sentence of the grammar (words separated by single spaces, a final '.')."""
    if not isinstance(text, str):
        raise TypeError(f"text: got {type(text).__name__}, need a str")
    if not text.endswith(".") or text != text.strip():
        return False
    words = text[:-1].split(" ")
    parsed = _parse_np(words, 0)
    if parsed is None or parsed[0] >= len(words):
        return False
    i, number = parsed
    verb = words[i]
    if _VI.get(verb) == number:
        i += 1
    elif _VT.get(verb) == number:
        obj = _parse_np(words, i + 1)
        if obj is None:
            return False
        i = obj[0]
    else:
        return False
    if i < len(words) and words[i] in PREPOSITIONS:
        place = _parse_np(words, i + 1)
        if place is None:
            return False
        i = place[0]
    return i == len(words)
