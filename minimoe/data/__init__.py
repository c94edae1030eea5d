"""The batter: tokens, synthetic data with chain-of-thought, mixtures, batches and evaluation.

Everything the course trains on is made here; nothing is downloaded. One idea per module:

- ``tokenizer``: characters to token ids and back, with PAD, BOS, EOS and SEP.
- ``sample``: the shape every example shares, and reading a final answer out of a completion.
- ``arithmetic``, ``strings``, ``grammar``: the generators, one domain each.
- ``tasks``: the table of domains, ``generate`` and ``is_correct``.
- ``mixture``: a seeded mixture of domains, split by problem; signed "teacher" answers.
- ``batches``: samples to ``(inputs, targets)`` tensors with a loss mask.
- ``evaluate``: exact-match accuracy per domain and difficulty for any answer function.
- ``textfile``: your own text file as the corpus.
"""

from minimoe.data.arithmetic import (
    add_cot_completion,
    make_arithmetic,
    mul_cot_completion,
    parse_add_cot,
    parse_mul_cot,
)
from minimoe.data.batches import Batch, collate, iterate_batches
from minimoe.data.evaluate import EvalReport, evaluate
from minimoe.data.grammar import is_sentence
from minimoe.data.mixture import (
    SPLITS,
    Mixture,
    count_tokens,
    sign_answers,
    split_index,
    tokens_by_domain,
)
from minimoe.data.sample import ANSWER_MARK, SIGNATURE_MARK, Sample, extract_answer
from minimoe.data.tasks import DOMAINS, domain_id, generate, is_correct
from minimoe.data.textfile import TextCorpus, load_text
from minimoe.data.tokenizer import BOS, EOS, PAD, SEP, SPECIAL_GLYPHS, TOKENIZER, CharTokenizer

__all__ = [
    "ANSWER_MARK", "BOS", "Batch", "CharTokenizer", "DOMAINS", "EOS", "EvalReport", "Mixture", "PAD",
    "SEP", "SIGNATURE_MARK", "SPECIAL_GLYPHS", "SPLITS", "Sample", "TOKENIZER", "TextCorpus",
    "add_cot_completion", "collate", "count_tokens", "domain_id", "evaluate", "extract_answer",
    "generate", "is_correct", "is_sentence", "iterate_batches", "load_text", "make_arithmetic", "mul_cot_completion",
    "parse_add_cot", "parse_mul_cot", "sign_answers", "split_index", "tokens_by_domain",
]
