"""Characters to token ids and back: the course's tokenizer.

A token is one character. The vocabulary is a string: the token with id ``i`` is ``vocab[i]``.
Its first four entries are the special tokens, each drawn as a glyph that ordinary text never
uses, so that ``decode`` can show them and ``encode(decode(ids)) == ids`` holds too:

======  ===  =====  ==========================================
name    id   glyph  what it marks
======  ===  =====  ==========================================
PAD     0    ␀      filler after a sequence ends (never scored)
BOS     1    ␂      the beginning of a sequence
EOS     2    ␃      the end of a sequence
SEP     3    ␟      the end of a prompt: the answer starts next
======  ===  =====  ==========================================

The default vocabulary adds the newline and the 95 printable ASCII characters (space to ``~``):
100 tokens, enough for every synthetic task and for most English text. Real models use
sub-word tokens (DeepSeek-V3's byte-level BPE has 128K of them); characters keep every id
readable and the vocabulary tiny.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, BOS, EOS, SEP = 0, 1, 2, 3
SPECIAL_GLYPHS = "\u2400\u2402\u2403\u241f"  # ␀ ␂ ␃ ␟, in id order
SPECIAL_NAMES = ("PAD", "BOS", "EOS", "SEP")
DEFAULT_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # newline, then printable ASCII


def _describe(ch: str) -> str:
    """``'é' (U+00E9)``: a character shown so that even invisible ones can be named."""
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer:
    """A character-level tokenizer with PAD, BOS, EOS and SEP at ids 0 to 3.

    ``chars`` are the ordinary characters, in id order after the four special tokens; each may
    appear once, and none may be a special glyph.
    """

    def __init__(self, chars: str = DEFAULT_CHARS):
        if not isinstance(chars, str):
            raise TypeError(f"chars: got {type(chars).__name__}, need a str of distinct characters")
        if not chars:
            raise ValueError("chars: got an empty string, need at least one character")
        seen: set[str] = set()
        for ch in chars:
            if ch in SPECIAL_GLYPHS:
                raise ValueError(f"chars: {_describe(ch)} is the glyph of a special token; leave it out")
            if ch in seen:
                raise ValueError(f"chars: {_describe(ch)} appears twice; each character needs one id")
            seen.add(ch)
        self.chars = chars
        self.vocab = SPECIAL_GLYPHS + chars  # token id i is vocab[i]
        self._ids = {ch: i for i, ch in enumerate(self.vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """A tokenizer whose vocabulary is exactly the characters of ``text``, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"text: got {type(text).__name__}, need a str")
        chars = "".join(sorted(set(text) - set(SPECIAL_GLYPHS)))
        if not chars:
            raise ValueError("text: got no ordinary characters to build a vocabulary from")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.vocab == self.vocab

    def __hash__(self) -> int:
        return hash(self.vocab)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self._ids))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, one per character; special glyphs become special tokens.

        Raises ValueError naming the first character outside the vocabulary and where it is.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: got {type(text).__name__}, need a str")
        ids = self._ids
        try:
            return [ids[ch] for ch in text]
        except KeyError:
            pos = next(i for i, ch in enumerate(text) if ch not in ids)
            raise ValueError(
                f"text: character {_describe(text[pos])} at position {pos} is not in the vocabulary "
                f"of {self.vocab_size} tokens"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (a list or a 1-D tensor); special tokens show as their glyphs."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids: got {type(ids).__name__}, need a list of ints or a 1-D tensor")
        out = []
        for pos, i in enumerate(ids):
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: got {i!r} at position {pos}, need ints in [0, {self.vocab_size})")
            out.append(self.vocab[i])
        return "".join(out)

    def strip_special(self, text: str) -> str:
        """``text`` without its special glyphs (what a reader wants to see of a generated sequence)."""
        return "".join(ch for ch in text if ch not in SPECIAL_GLYPHS)

    def encode_prompt(self, prompt: str) -> list[int]:
        """``BOS prompt SEP``: what a model is given to generate an answer."""
        return [BOS, *self.encode(prompt), SEP]

    def encode_example(self, prompt: str, completion: str) -> tuple[list[int], int]:
        """``BOS prompt SEP completion EOS`` and the index in it of the completion's first token."""
        ids = self.encode_prompt(prompt)
        start = len(ids)
        ids += self.encode(completion)
        ids.append(EOS)
        return ids, start


TOKENIZER = CharTokenizer()
"""The course's tokenizer: special tokens, newline and printable ASCII (100 tokens)."""
