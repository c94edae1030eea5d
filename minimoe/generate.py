"""Sampling from a model: greedy, temperature and top-k, with or without the KV cache.

With the cache, the prompt is run once and each new token costs one position's work; without it,
every step runs the whole sequence again. Greedy decoding gives the same tokens either way (a test
holds it to that); ``benchmarks/bench_generate.py`` measures the speed-up.

``decode_step_seconds`` times one attention layer's step for one new token after a given number of
cached ones (MHA, GQA, or MLA in its naive or absorbed form); ``benchmarks/bench_decode_attention.py``
sweeps it over context lengths for chapter 08.

Test-time compute (chapter 10): ``sample_answers`` draws several answers per prompt and
``majority_vote`` / ``vote_accuracy`` keep the most common final answer, which buys accuracy with tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from minimoe.config import ModelConfig
from minimoe.data import Sample
from minimoe.model.attention import Attention
from minimoe.model.cache import KVCache
from minimoe.model.latent import LatentAttention
from minimoe.model.layers import rope_angles
from minimoe.model.transformer import Transformer


def _as_batch(prompt: torch.Tensor | list[int] | list[list[int]]) -> torch.Tensor:
    t = prompt if isinstance(prompt, torch.Tensor) else torch.tensor(prompt, dtype=torch.long)
    if t.dim() == 1:
        t = t[None, :]
    if t.dim() != 2 or t.shape[1] == 0 or t.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"prompt: got shape {tuple(t.shape)} {t.dtype}, need a non-empty list or (batch, time) tensor of ids")
    return t.long()


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator | None) -> torch.Tensor:
    """logits: (B, vocab) -> next ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def generate(model: Transformer, prompt: torch.Tensor | list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, use_cache: bool = True,
             stop_token: int | None = None) -> torch.Tensor:
    """Continue ``prompt`` (ids: a list, or a (B, T) tensor) by up to ``max_new_tokens`` tokens.

    ``temperature=0`` is greedy decoding; ``top_k`` keeps the k likeliest tokens; ``seed`` makes
    sampling repeatable. Stops early once every row has produced ``stop_token``. Returns the new
    tokens only: (B, n_new).
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: got {max_new_tokens!r}, need an int >= 1")
    if temperature < 0:
        raise ValueError(f"temperature: got {temperature}, need >= 0 (0 is greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: got {top_k!r}, need None or an int >= 1")
    device = next(model.parameters()).device
    tokens = _as_batch(prompt).to(device)
    limit = model.cfg.max_seq_len
    if tokens.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) exceed the model's "
                         f"{limit} positions")
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    # inference_mode, not just no_grad: autograd keeps no version counters or view records either,
    # which is most of the per-token overhead of a small model. The tokens are cloned out of it below.
    try:
        with torch.inference_mode():
            new = _decode(model, tokens, max_new_tokens, temperature, top_k, gen, use_cache, stop_token)
    finally:
        model.train(was_training)
    return new.clone()  # an ordinary tensor, usable anywhere (inference tensors cannot enter autograd)


def _decode(model: Transformer, tokens: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
            gen: torch.Generator | None, use_cache: bool, stop_token: int | None) -> torch.Tensor:
    """The decoding loop: one cache for the whole generation, then one position per new token."""
    device = tokens.device
    cache = model.new_cache(tokens.shape[0], tokens.shape[1] + max_new_tokens) if use_cache else None
    logits = model(tokens, cache=cache).logits[:, -1]  # (B, vocab)
    out, done = [], torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)
    seq = tokens
    for _ in range(max_new_tokens):
        nxt = _pick(logits, temperature, top_k, gen)  # (B,)
        out.append(nxt)
        if stop_token is not None:
            done |= nxt == stop_token
            if bool(done.all()):
                break
        if len(out) == max_new_tokens:
            break
        if cache is not None:
            logits = model(nxt[:, None], cache=cache).logits[:, -1]
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            logits = model(seq).logits[:, -1]
    return torch.stack(out, dim=1)  # (B, n_new)


def complete(model: Transformer, prompts: list[str], tokenizer=None, max_new_tokens: int = 120,
             temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """Answer each prompt as the model was trained to: ``BOS prompt SEP`` in, text up to EOS out.

    Prompts of the same length run as one batch, so a few hundred answers take seconds on a CPU.
    """
    from minimoe.data import EOS, TOKENIZER

    tokenizer = tokenizer or TOKENIZER
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts: need a list of strings")
    encoded = [tokenizer.encode_prompt(p) for p in prompts]
    answers: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for length, rows in by_length.items():
        budget = min(max_new_tokens, model.cfg.max_seq_len - length)
        if budget < 1:
            raise ValueError(f"prompts: {prompts[rows[0]]!r} leaves no room to answer in {model.cfg.max_seq_len} positions")
        batch = torch.tensor([encoded[i] for i in rows], dtype=torch.long)
        new = generate(model, batch, budget, temperature=temperature, seed=seed, stop_token=EOS)
        for i, ids in zip(rows, new.tolist()):
            answers[i] = tokenizer.decode(ids[: ids.index(EOS)] if EOS in ids else ids)
    return answers


@dataclass
class Answer:
    """One generated answer: what came out, whether it was right, and what it cost."""

    sample: Sample
    completion: str
    correct: bool
    tokens: int  # tokens generated, EOS included
    seconds: float  # wall time, the batch's time shared equally among its answers


def answer_all(model: Transformer, samples: list[Sample], tokenizer=None, max_new_tokens: int = 200,
               use_cache: bool = True) -> list[Answer]:
    """Greedy answers to ``samples``, batched by prompt length, with tokens and time per answer."""
    from minimoe.data import EOS, TOKENIZER, is_correct

    tokenizer = tokenizer or TOKENIZER
    if not samples:
        raise ValueError("samples: need at least one Sample")
    encoded = [tokenizer.encode_prompt(s.prompt) for s in samples]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    out: list[Answer | None] = [None] * len(samples)
    for length, rows in sorted(by_length.items()):
        budget = min(max_new_tokens, model.cfg.max_seq_len - length)
        batch = torch.tensor([encoded[i] for i in rows], dtype=torch.long)
        start = time.perf_counter()
        new = generate(model, batch, budget, temperature=0, stop_token=EOS, use_cache=use_cache)
        seconds = (time.perf_counter() - start) / len(rows)
        for i, ids in zip(rows, new.tolist()):
            n = ids.index(EOS) + 1 if EOS in ids else len(ids)
            text = tokenizer.decode(ids[: n - 1] if EOS in ids else ids)
            out[i] = Answer(samples[i], text, is_correct(samples[i], text), n, seconds)
    return out  # type: ignore[return-value]


def summarize(answers: list[Answer], by: str = "difficulty") -> dict:
    """Accuracy, mean tokens and mean seconds per answer, overall and per ``by`` (difficulty or domain)."""
    if by not in ("difficulty", "domain"):
        raise ValueError(f"by: got {by!r}, need 'difficulty' or 'domain'")
    groups: dict = {}
    for a in answers:
        groups.setdefault(getattr(a.sample, by), []).append(a)

    def stats(items: list[Answer]) -> dict:
        n = len(items)
        return {"n": n, "accuracy": sum(a.correct for a in items) / n, "tokens": sum(a.tokens for a in items) / n,
                "seconds": sum(a.seconds for a in items) / n}

    return {"all": stats(answers), **{k: stats(v) for k, v in sorted(groups.items())}}


@torch.no_grad()
def decode_step_seconds(cfg: ModelConfig, context: int, impl: str = "auto", batch: int = 1, repeats: int = 10,
                        seed: int = 0, best: bool = False) -> float:
    """Seconds (the median of ``repeats`` after a warm-up; the fastest with ``best=True``, which
    suits a busy machine) that one attention layer of ``cfg`` takes to decode one new token for
    ``batch`` sequences with ``context`` tokens already in its cache.

    The layer and its cache are random (speed does not depend on the values): the cache is filled
    with ``context`` positions, and each timed step computes the new token's queries, keys and values,
    writes them at position ``context`` and attends over all ``context + 1``. ``impl``: for MLA,
    ``"absorbed"`` or ``"naive"`` (``"auto"`` decodes absorbed, as the model does); MHA and GQA
    take ``"auto"``.
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg: got {type(cfg).__name__}, need a ModelConfig")
    for name, value in (("context", context), ("batch", batch), ("repeats", repeats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: got {value!r}, need an int >= 1")
    mla = cfg.attention == "mla"
    if impl not in (("auto", "naive", "absorbed") if mla else ("auto",)):
        raise ValueError(f"impl: got {impl!r}, need " + ("'auto', 'naive' or 'absorbed'" if mla else "'auto' for "
                                                         f"{cfg.attention}"))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = (LatentAttention(cfg) if mla else Attention(cfg)).eval()
    if mla:
        layer.impl = impl
        cache = KVCache(1, batch, 1, context + 1, cfg.kv_lora_rank + cfg.qk_rope_head_dim, v_head_dim=0)
        rope_dim = cfg.qk_rope_head_dim
    else:
        cache = KVCache(1, batch, cfg.kv_heads, context + 1, cfg.dim_head)
        rope_dim = cfg.dim_head
    for buffer in cache.k + cache.v:
        buffer[:, :, :context] = torch.randn(buffer[:, :, :context].shape, generator=gen)
    cache.length = context  # never advanced: every step writes position `context` again
    x = torch.randn(batch, 1, cfg.d_model, generator=gen)
    cos, sin = rope_angles(torch.tensor([context]), rope_dim)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        layer(x, cos, sin, cache=cache, layer=0)
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - start)
    return min(times) if best else sorted(times)[len(times) // 2]


# --- test-time compute: sample several answers, keep the most common ---------------------------------

def majority_vote(answers: list[str]) -> str:
    """The most common of ``answers``; a tie goes to the answer that came first (self-consistency,
    Wang et al. 2022, arXiv 2203.11171: sample several chains of thought, keep the most common final answer)."""
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError("answers: need a non-empty list of strings")
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def vote_accuracy(answers: list[list[str]], truths: list[str], n: int) -> float:
    """How often a majority vote over ``n`` sampled answers is right.

    ``answers[i]`` holds the m sampled final answers to problem i, ``truths[i]`` its right answer.
    Each problem's m samples make m // n disjoint votes of n; the result is the mean over every vote
    of every problem, so that n = 1 is the plain accuracy of one sample and every n uses all samples.
    """
    if len(answers) != len(truths) or not answers:
        raise ValueError(f"answers, truths: got {len(answers)} and {len(truths)}, need the same number >= 1")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: got {n!r}, need an int >= 1")
    m = min(len(a) for a in answers)
    if n > m:
        raise ValueError(f"n: got {n}, but some problem has only {m} sampled answers")
    right = total = 0
    for samples, truth in zip(answers, truths):
        for g in range(m // n):
            right += majority_vote(list(samples[g * n:(g + 1) * n])) == truth
            total += 1
    return right / total


def sample_answers(model: Transformer, prompts: list[str], n: int, temperature: float = 1.0, seed: int = 0,
                   max_new_tokens: int = 120, tokenizer=None) -> list[list[str]]:
    """``n`` completions per prompt, sampled at ``temperature`` (seeded): a list of n strings per prompt."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: got {n!r}, need an int >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature: got {temperature!r}, need > 0 (0 would give n copies of the greedy answer)")
    flat = complete(model, [p for p in prompts for _ in range(n)], tokenizer, max_new_tokens, temperature, seed)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


@torch.no_grad()
def seconds_per_token(model: Transformer, batch: int = 1, prompt: int = 16, new: int = 16, seed: int = 0) -> float:
    """Measured wall time of one decoding step with the cache: ``batch`` sequences each adding a token
    after a random ``prompt``, averaged over ``new`` steps (the prompt's own pass is not timed)."""
    for name, value in (("batch", batch), ("prompt", prompt), ("new", new)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: got {value!r}, need an int >= 1")
    if prompt + new > model.cfg.max_seq_len:
        raise ValueError(f"prompt + new: got {prompt + new}, need at most the model's {model.cfg.max_seq_len} positions")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, model.cfg.vocab_size, (batch, prompt), generator=g).to(device)
        cache = model.new_cache(batch, prompt + new)
        nxt = model(tokens, cache=cache).logits[:, -1:].argmax(-1)  # (B, 1)
        start = time.perf_counter()
        for _ in range(new):
            nxt = model(nxt, cache=cache).logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / new
    finally:
        model.train(was_training)
