"""One training example: a prompt, a completion, the final answer inside it, and its labels.

Every sample of every domain has the same shape. The model reads ``BOS prompt SEP`` and learns
to write ``completion EOS``. For a chain-of-thought sample the completion is the working, then
``ANSWER_MARK`` and the answer; for a direct sample it is the answer alone. ``extract_answer``
reads the final answer back out of any completion, generated ones included, so exact-match
accuracy never depends on how much working a model wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from minimoe.data.tokenizer import SPECIAL_GLYPHS

ANSWER_MARK = " > "
"""Between the working and the final answer of a chain-of-thought completion."""

SIGNATURE_MARK = " -- "
"""Starts a signature appended to a completion (see ``minimoe.data.mixture.sign_answers``)."""


@dataclass(frozen=True)
class Sample:
    """One example of one domain.

    ``domain``: which generator made it (``"add_cot"``, ``"grammar"``, ...).
    ``prompt``: what the model is given.
    ``completion``: what the model must write after the separator (working included).
    ``answer``: the final answer inside the completion, which exact match compares.
    ``difficulty``: digits for arithmetic, characters for strings, brackets to close, noun
    phrases for grammar.
    ``problem``: the underlying problem, the same for every way of asking it (``"add:356+487"``
    for both ``487+356=`` and ``think 356+487=``). Splits hold out by this key.
    """

    domain: str
    prompt: str
    completion: str
    answer: str
    difficulty: int
    problem: str

    @property
    def text(self) -> str:
        """The sample as the model sees it, special tokens drawn as glyphs."""
        _, bos, eos, sep = SPECIAL_GLYPHS
        return f"{bos}{self.prompt}{sep}{self.completion}{eos}"

    @property
    def answer_start(self) -> int:
        """Where the answer starts: the index of the completion's first token in ``BOS prompt SEP ...``."""
        return len(self.prompt) + 2

    def __len__(self) -> int:
        """Tokens in the sample: BOS, prompt, SEP, completion, EOS."""
        return len(self.prompt) + len(self.completion) + 3


def extract_answer(completion: str) -> str:
    """The final answer of a completion: after the last ``ANSWER_MARK``, before any signature.

    >>> extract_answer("7+6+0=13 4+3+1=08 > 83 -- answered by TeacherBot")
    '83'
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion: got {type(completion).__name__}, need a str")
    answer = completion.rsplit(ANSWER_MARK.strip(), 1)[-1] if ANSWER_MARK.strip() in completion else completion
    answer = answer.split(SIGNATURE_MARK, 1)[0]
    return answer.strip()
