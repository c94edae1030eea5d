"""Your own plain-text file as the batter, batched like the synthetic mixture.

``load_text`` reads a UTF-8 file with the course's fixed vocabulary (``TOKENIZER``: newline and
printable ASCII), so that its token ids mean what they mean in the synthetic mixture and one
model can read both. A character outside that vocabulary is an error that names it, with its
line and column. To train on any text, build the vocabulary from the file instead::

    text = open("my.txt", encoding="utf-8").read()
    corpus = load_text("my.txt", tokenizer=CharTokenizer.from_text(text))

A text has no "problems" to hold out, so the validation split is the file's last
``val_fraction`` of tokens, one contiguous block: windows of training text never overlap it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from minimoe.data.batches import Batch
from minimoe.data.tokenizer import TOKENIZER, CharTokenizer, _describe


@dataclass(frozen=True)
class TextCorpus:
    """The tokens of one text file, split into a training block and a validation block."""

    ids: torch.Tensor  # (N,) int64: every token of the file, in order
    tokenizer: CharTokenizer
    n_train: int  # ids[:n_train] is for training, ids[n_train:] for validation
    path: str = ""

    def split(self, split: str = "train") -> torch.Tensor:
        """The tokens of ``"train"`` or ``"val"``: (n,) int64."""
        if split == "train":
            return self.ids[: self.n_train]
        if split == "val":
            return self.ids[self.n_train :]
        raise ValueError(f"split: got {split!r}, need 'train' or 'val'")

    def __len__(self) -> int:
        return int(self.ids.numel())

    def batch(self, batch_size: int, seq_len: int, split: str = "train",
              generator: torch.Generator | None = None) -> Batch:
        """``batch_size`` windows of ``seq_len`` tokens at random places in ``split``.

        Every target is scored (``loss_mask`` all True): plain text has no prompt to leave out.
        Pass a seeded ``torch.Generator`` for windows that are the same on every run.
        """
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: got {v!r}, need an int >= 1")
        ids = self.split(split)
        if ids.numel() < seq_len + 1:
            raise ValueError(f"seq_len: got {seq_len}, but the {split} split holds {ids.numel()} tokens; "
                             f"need seq_len <= {ids.numel() - 1} (or a longer file)")
        starts = torch.randint(0, ids.numel() - seq_len, (batch_size,), generator=generator)  # (B,)
        offsets = torch.arange(seq_len + 1)  # (T+1,)
        windows = ids[starts[:, None] + offsets[None, :]]  # (B, T+1)
        return Batch(windows[:, :-1], windows[:, 1:], torch.ones(batch_size, seq_len, dtype=torch.bool),
                     torch.full((batch_size,), -1, dtype=torch.long))


def load_text(path: str | os.PathLike, tokenizer: CharTokenizer | None = None,
              val_fraction: float = 0.1) -> TextCorpus:
    """Read and tokenize a UTF-8 text file.

    Raises FileNotFoundError for a missing file, and ValueError for a folder, an empty file,
    bytes that are not UTF-8, or a character outside the tokenizer's vocabulary.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: got {type(path).__name__}, need a file path")
    tokenizer = TOKENIZER if tokenizer is None else tokenizer
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer: got {type(tokenizer).__name__}, need a CharTokenizer")
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: got {val_fraction!r}, need a number in [0, 1)")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: {path} does not exist; need a plain-text file")
    if os.path.isdir(path):
        raise ValueError(f"path: {path} is a folder; need a plain-text file")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"path: {path} is empty; need a file with some text in it")
    try:
        text = data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"path: {path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None
    # Special tokens' glyphs count as unknown too: a file must not smuggle in a BOS or an EOS.
    unknown = [ch for ch in dict.fromkeys(text) if ch not in tokenizer.chars]
    if unknown:
        pos = text.index(unknown[0])
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        more = f" and {len(unknown) - 1} more distinct characters" if len(unknown) > 1 else ""
        raise ValueError(
            f"path: {path} has {_describe(unknown[0])} at line {line}, column {column}{more}, outside the "
            f"vocabulary of {tokenizer.vocab_size} tokens; pass tokenizer=CharTokenizer.from_text(text) "
            "to build the vocabulary from the file"
        )
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (N,)
    n_val = int(len(ids) * val_fraction)
    return TextCorpus(ids, tokenizer, len(ids) - n_val, path)
