"""Packed batches: whole samples back to back in rows of a fixed length, almost no PAD.

A padded batch (``collate``) gives every sample its own row and fills the rest with PAD; on the
chapter-02 mixture that is most of the positions, and every one of them costs the same compute as a
real token. Packing puts several whole samples in each row instead::

    row 0:  ␂12+34=␟46␃ ␂abc␟cba␃ ␂7*8=␟56␃ ... ␀␀
    seg:     0000000000 1111111111 2222222222     -1-1

``segments`` says which sample of its row each position belongs to (-1 on the PAD at a row's end).
The model uses it twice, so that a packed row computes exactly what the padded rows would:

- attention is confined to each sample: a block-diagonal causal mask (a token sees the earlier
  tokens of its own sample, never the sample before it);
- positions restart at 0 for each sample, so RoPE rotates a sample the same wherever it sits.

The loss mask is the padded one, sample by sample: a packed batch's loss equals the padded batch's
of the same samples, and so does every real token's logits (``tests/test_packing.py``).

Rows are filled first-fit: each sample goes into the first of the recently opened rows with room
for it, else opens a new row. ``PackedSamples`` packs a whole shuffled epoch at a time, so every
training sample is used exactly once per epoch and the batch of step ``s`` is a pure function of
the seed and ``s`` (resume stays bit for bit).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from minimoe.data.batches import Batch, _check_score
from minimoe.data.sample import Sample
from minimoe.data.tokenizer import PAD, TOKENIZER, CharTokenizer

Encoded = tuple[list[int], int]  # (ids of BOS prompt SEP completion EOS, index of the completion's first token)


def _check_length(length: object) -> int:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length: got {length!r}, need an int >= 1 (positions per packed row)")
    return length


def encode_samples(samples: Sequence[Sample], tokenizer: CharTokenizer = TOKENIZER) -> list[Encoded]:
    """Tokenize each sample once: ``(ids, completion_start)`` per sample."""
    if not isinstance(samples, Sequence) or not samples:
        raise ValueError("samples: need a non-empty list of Samples")
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer: got {type(tokenizer).__name__}, need a CharTokenizer")
    out = []
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"samples: got a {type(s).__name__}, need Samples")
        out.append(tokenizer.encode_example(s.prompt, s.completion))
    return out


def check_fits(encoded: Sequence[Encoded], length: int, samples: Sequence[Sample] | None = None) -> None:
    """Raise ValueError naming the longest sample if it needs more than ``length`` positions.

    A sample of L tokens takes L - 1 positions (the model reads all but its last token).
    """
    worst = max(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    need = len(encoded[worst][0]) - 1
    if need > length:
        what = f" ({samples[worst].prompt!r}, {samples[worst].domain})" if samples is not None else ""
        raise ValueError(f"length: got {length}, but sample {worst}{what} needs {need} positions; "
                         f"need a row length >= {need} (or leave that sample out)")


def first_fit(sizes: Sequence[int], capacity: int, window: int = 32) -> list[list[int]]:
    """Place items, in order, into rows of ``capacity``: each goes into the first of the last
    ``window`` open rows with room for it, or opens a new row. Returns each row's item indices.

    The window bounds the work (items x window) and costs almost nothing in fill: with the
    mixture's short samples the rows that are still open are nearly full anyway.
    """
    _check_length(capacity)
    rows: list[list[int]] = []
    free: list[int] = []  # room left in each row
    open_rows: list[int] = []  # the last `window` rows that may still take an item, oldest first
    smallest = min(sizes) if len(sizes) else 1
    for i, size in enumerate(sizes):
        if size > capacity or size < 0:
            raise ValueError(f"sizes: item {i} has size {size}, need 0..{capacity}")
        for r in open_rows:
            if free[r] >= size:
                break
        else:
            r = len(rows)
            rows.append([])
            free.append(capacity)
            open_rows.append(r)
            if len(open_rows) > window:
                open_rows.pop(0)  # the oldest open row is no longer looked at
        rows[r].append(i)
        free[r] -= size
        if free[r] < smallest:
            open_rows.remove(r)
    return rows


def rows_to_batch(encoded: Sequence[Encoded], rows: Sequence[Sequence[int]], length: int,
                  score: str = "answer") -> Batch:
    """The packed batch whose row b holds the samples ``rows[b]`` (indices into ``encoded``), in order."""
    _check_score(score)
    _check_length(length)
    B = len(rows)
    inputs = torch.full((B, length), PAD, dtype=torch.long)  # (B, T)
    targets = torch.full((B, length), PAD, dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros(B, length, dtype=torch.bool)  # (B, T)
    segments = torch.full((B, length), -1, dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        ids_in, ids_out, seg, scored = [], [], [], []
        for j, i in enumerate(row):
            ids, start = encoded[i]
            n = len(ids) - 1  # positions this sample takes
            first = start - 1 if score == "answer" else 0  # the target at position start-1 is ids[start]
            ids_in += ids[:-1]
            ids_out += ids[1:]
            seg += [j] * n
            scored += [False] * first + [True] * (n - first)
        if len(ids_in) > length:
            raise ValueError(f"rows: row {b} holds {len(ids_in)} positions, more than length={length}")
        used = len(ids_in)
        inputs[b, :used] = torch.tensor(ids_in, dtype=torch.long)
        targets[b, :used] = torch.tensor(ids_out, dtype=torch.long)
        segments[b, :used] = torch.tensor(seg, dtype=torch.long)
        loss_mask[b, :used] = torch.tensor(scored, dtype=torch.bool)
    domains = torch.full((B,), -1, dtype=torch.long)  # a packed row mixes domains
    return Batch(inputs, targets, loss_mask, domains, segments >= 0, segments)


def pack(samples: Sequence[Sample], length: int, tokenizer: CharTokenizer = TOKENIZER,
         score: str = "answer") -> Batch:
    """Pack ``samples`` (all of them, first-fit in the given order) into rows of ``length`` positions.

    Returns a ``Batch`` with ``segments`` and ``token_mask``; as many rows as the samples need.
    A sample longer than a row raises ValueError.
    """
    _check_length(length)
    _check_score(score)
    encoded = encode_samples(samples, tokenizer)
    check_fits(encoded, length, samples)
    rows = first_fit([len(ids) - 1 for ids, _ in encoded], length)
    return rows_to_batch(encoded, rows, length, score)


class PackedSamples:
    """An endless stream of packed rows over ``samples``: epoch after epoch, each a fresh shuffle.

    ``rows(start, count)`` is the batch of rows ``start .. start+count-1`` of the stream, a pure
    function of ``seed``: epoch ``e`` shuffles the samples with (seed, e), packs them first-fit, and
    contributes ``rows_per_epoch`` rows (the first epoch's count; a later epoch that packs into a
    row or two more drops its last, least full rows, one that packs into fewer wraps around).
    """

    def __init__(self, samples: Sequence[Sample], length: int, seed: int = 0, score: str = "answer",
                 tokenizer: CharTokenizer = TOKENIZER):
        _check_length(length)
        _check_score(score)
        self.encoded = encode_samples(samples, tokenizer)
        check_fits(self.encoded, length, samples)
        self.sizes = [len(ids) - 1 for ids, _ in self.encoded]
        self.length, self.seed, self.score = length, seed, score
        self._cache: dict[int, list[list[int]]] = {}
        self.rows_per_epoch = len(self.epoch(0))

    def epoch(self, e: int) -> list[list[int]]:
        """The rows (lists of sample indices) of epoch ``e``."""
        if e not in self._cache:
            order = list(range(len(self.encoded)))
            random.Random(f"minimoe.data.packing/{self.seed}/{e}").shuffle(order)
            rows = first_fit([self.sizes[i] for i in order], self.length)
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[e] = [[order[j] for j in row] for row in rows]
        return self._cache[e]

    def rows(self, start: int, count: int) -> Batch:
        if not isinstance(start, int) or start < 0 or not isinstance(count, int) or count < 1:
            raise ValueError(f"start, count: got {start!r}, {count!r}, need ints >= 0 and >= 1")
        picked = []
        for r in range(start, start + count):
            rows = self.epoch(r // self.rows_per_epoch)
            picked.append(rows[(r % self.rows_per_epoch) % len(rows)])
        return rows_to_batch(self.encoded, picked, self.length, self.score)

    def fill(self) -> float:
        """The fraction of an epoch's positions that hold real tokens."""
        return sum(self.sizes) / (self.rows_per_epoch * self.length)
