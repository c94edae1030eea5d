"""Samples into tensors: ``(inputs, targets)`` with a loss mask, ready for a language model.

A sample is the token sequence ``BOS prompt SEP completion EOS``. The model reads ``inputs``
(the sequence without its last token) and at every position predicts the next token, so
``targets`` is the sequence without its first token.

Two ways to make a rectangle of samples:

- ``collate`` (padded): one sample per row, shorter rows filled with PAD. Cheap to build and the
  way evaluation and generation batch their prompts.
- ``pack`` (packed, ``minimoe.data.packing``): whole samples back to back in rows of a fixed
  length, with ``segments`` saying which sample each position belongs to, so that the model
  confines attention to each sample and restarts positions at 0. Training uses it: on the
  chapter-02 mixture a padded batch is mostly PAD, a packed one almost all real tokens.

``token_mask`` marks the real input positions (False on PAD): the model keeps PAD out of routing,
load statistics and balance losses with it.

``loss_mask`` says which targets the loss counts. With ``score="answer"`` only the completion
and its EOS are scored: the model is never trained to produce the prompt, which it is always
given (chapter 10 trains this way). With ``score="all"`` every real token is scored, as in
pre-training on plain text. PAD targets are never scored.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from minimoe.data.sample import Sample
from minimoe.data.tasks import domain_id
from minimoe.data.tokenizer import PAD, TOKENIZER, CharTokenizer

SCORES = ("answer", "all")


@dataclass(frozen=True)
class Batch:
    """One batch of ``B`` sequences of ``T`` positions."""

    inputs: torch.Tensor  # (B, T) int64: BOS prompt SEP completion, then PAD
    targets: torch.Tensor  # (B, T) int64: inputs shifted left by one: ... completion EOS, then PAD
    loss_mask: torch.Tensor  # (B, T) bool: True where the loss counts the target
    domain_ids: torch.Tensor  # (B,) int64: index into minimoe.data.DOMAINS, -1 for plain text or a packed row
    token_mask: torch.Tensor | None = None  # (B, T) bool: True on real input tokens, False on PAD (None: all real)
    segments: torch.Tensor | None = None  # (B, T) int64, packed rows only: which sample of its row, -1 on PAD

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(None if t is None else t.to(device) for t in
                       (self.inputs, self.targets, self.loss_mask, self.domain_ids, self.token_mask, self.segments)))

    def model_inputs(self) -> dict:
        """Keyword arguments for ``Transformer.forward``: tokens, targets, loss, token and segment masks."""
        return {"tokens": self.inputs, "targets": self.targets, "loss_mask": self.loss_mask,
                "token_mask": self.token_mask, "segments": self.segments}

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inputs.shape)

    @property
    def scored(self) -> int:
        """How many targets the loss counts."""
        return int(self.loss_mask.sum())

    @property
    def real_tokens(self) -> int:
        """How many input positions hold a real token (not PAD)."""
        return self.inputs.numel() if self.token_mask is None else int(self.token_mask.sum())

    @property
    def pad_fraction(self) -> float:
        """The fraction of positions that are PAD."""
        return 1.0 - self.real_tokens / max(1, self.inputs.numel())


def _check_score(score: object) -> str:
    if score not in SCORES:
        raise ValueError(f"score: got {score!r}, need one of {', '.join(map(repr, SCORES))}")
    return score


def collate(samples: Sequence[Sample], tokenizer: CharTokenizer = TOKENIZER, score: str = "answer",
            length: int | None = None) -> Batch:
    """Tokenize ``samples`` into one padded batch.

    ``length``: the number of positions ``T`` (default: the longest sample's tokens minus one);
    a sample that does not fit raises ValueError instead of silently losing its answer.
    """
    if not isinstance(samples, Sequence) or not samples:
        raise ValueError(f"samples: got {type(samples).__name__} of length "
                         f"{len(samples) if isinstance(samples, Sequence) else '?'}, need a non-empty list of Samples")
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer: got {type(tokenizer).__name__}, need a CharTokenizer")
    _check_score(score)
    encoded = []
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"samples: got a {type(s).__name__}, need Samples")
        encoded.append(tokenizer.encode_example(s.prompt, s.completion))
    longest = max(len(ids) for ids, _ in encoded) - 1
    if length is None:
        length = longest
    elif not isinstance(length, int) or isinstance(length, bool) or length < longest:
        worst = max(range(len(samples)), key=lambda i: len(encoded[i][0]))
        raise ValueError(f"length: got {length!r}, need an int >= {longest} to fit sample {worst} "
                         f"({samples[worst].prompt!r}, {len(encoded[worst][0])} tokens)")
    B, T = len(samples), length
    seq = torch.full((B, T + 1), PAD, dtype=torch.long)  # (B, T+1)
    mask = torch.zeros(B, T, dtype=torch.bool)  # (B, T)
    real = torch.zeros(B, T, dtype=torch.bool)  # (B, T)
    for b, (ids, start) in enumerate(encoded):
        seq[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        first = start - 1 if score == "answer" else 0  # the target at position start-1 is ids[start]
        mask[b, first : len(ids) - 1] = True
        real[b, : len(ids) - 1] = True  # inputs are ids[:-1]; PAD after
    domains = torch.tensor([domain_id(s.domain) for s in samples], dtype=torch.long)  # (B,)
    return Batch(seq[:, :-1], seq[:, 1:], mask, domains, real)


def iterate_batches(samples: Sequence[Sample], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                    score: str = "answer", tokenizer: CharTokenizer = TOKENIZER,
                    drop_last: bool = False) -> Iterator[Batch]:
    """One pass over ``samples`` in batches of ``batch_size``, shuffled by ``seed``.

    Each batch is padded to its own longest sample: cheap for evaluation, wasteful for training
    (see ``minimoe.data.packing``, which training uses).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}, need an int >= 1")
    if not isinstance(samples, Sequence) or not samples:
        raise ValueError("samples: need a non-empty list of Samples")
    _check_score(score)
    order = list(range(len(samples)))
    if shuffle:
        random.Random(f"minimoe.data.batches/{seed}").shuffle(order)
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        if drop_last and len(chunk) < batch_size:
            return
        yield collate([samples[j] for j in chunk], tokenizer, score)
