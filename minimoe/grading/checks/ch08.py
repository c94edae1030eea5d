"""Chapter 08's exercises: KV bytes per token; MLA's up-projection of the latent; the cache update;
absorbed MLA decoding for one head.

The absorbed decoding is checked against the naive form (keys and values expanded from the latent),
computed here in float64 from the same float64 inputs the student's function gets, within the
registry's float64 tolerance (rtol 1e-7, atol 1e-7): the two forms differ only in the order of
float operations. The student returns the latent-space query and output too, so that the check
sees the absorbed computation itself, not only its result.
"""

from __future__ import annotations

import math

import torch

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.grading.registry import Student, StudentError, exercise, expect_close, expect_equal, expect_tuple


def _int(rng: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


kv = exercise("08.kv_bytes", "KV-cache bytes per token", functions=("kv_bytes_per_token",),
    protects=("minimoe.recipe.kv_bytes_per_token", "minimoe.recipe.kv_elements_per_token"))


def _random_config(rng: torch.Generator, attention: str) -> dict:
    n_kv = _int(rng, 1, 4)
    n_heads = n_kv * _int(rng, 1, 4)
    d_model = n_heads * _int(rng, 4, 32)
    head_dim = d_model // n_heads + _int(rng, 1, 64)  # never d_model // n_heads, as in DeepSeek-V3 (128, not 56)
    fields = dict(attention=attention, n_layers=_int(rng, 1, 64), n_heads=n_heads, d_model=d_model, head_dim=head_dim)
    if attention == "gqa":
        fields["n_kv_heads"] = n_kv
    if attention == "mla":
        fields.update(kv_lora_rank=_int(rng, 8, 512), qk_rope_head_dim=2 * _int(rng, 1, 32),
                      qk_nope_head_dim=_int(rng, 8, 64), v_head_dim=_int(rng, 8, 64))
    return fields


def _check_kv(student: Student, rng: torch.Generator, attention: str) -> None:
    for _ in range(3):
        fields = _random_config(rng, attention)
        cfg = ModelConfig(**fields)
        for width in (2, 4):
            expect_equal(student.call("kv_bytes_per_token", fields, width), recipe.kv_bytes_per_token(cfg, width),
                         f"kv_bytes_per_token({fields}, {width})")


@kv.check("multi-head attention", points=1,
          hint="every layer keeps a key and a value for each head: 2 x n_heads x head_dim numbers, with the config's "
               "head_dim (not d_model // n_heads: DeepSeek-V3's heads are 128 wide, though 7168 // 128 = 56)")
def _kv_mha(student: Student, rng: torch.Generator) -> None:
    _check_kv(student, rng, "mha")


@kv.check("grouped-query attention", points=1,
          hint="only the n_kv_heads key/value heads are cached, not every query head, each head_dim wide")
def _kv_gqa(student: Student, rng: torch.Generator) -> None:
    _check_kv(student, rng, "gqa")


@kv.check("multi-head latent attention", points=2,
          hint="MLA caches the compressed latent (kv_lora_rank) and the shared RoPE key (qk_rope_head_dim) per layer, for all heads at once")
def _kv_mla(student: Student, rng: torch.Generator) -> None:
    _check_kv(student, rng, "mla")


latent = exercise("08.expand_latent", "MLA's up-projection of the latent", functions=("expand_latent",),
    protects=("minimoe.model.latent.LatentAttention.up_projections",))


def _expand_reference(c_kv, w_ukv, n_heads, d_nope, d_v):
    w = w_ukv.view(n_heads, d_nope + d_v, -1)  # (H, d_nope + d_v, d_c)
    return torch.einsum("tc,hnc->htn", c_kv, w[:, :d_nope]), torch.einsum("tc,hvc->htv", c_kv, w[:, d_nope:])


def _expand_case(rng: torch.Generator):
    n_heads, d_nope, d_v, d_c, t = _int(rng, 1, 6), _int(rng, 1, 16), _int(rng, 1, 16), _int(rng, 2, 24), _int(rng, 1, 9)
    c_kv = torch.randn(t, d_c, generator=rng)
    w_ukv = torch.randn(n_heads * (d_nope + d_v), d_c, generator=rng) / d_c ** 0.5
    return c_kv, w_ukv, n_heads, d_nope, d_v


def _expand_call(student: Student, case):
    return expect_tuple(student.call("expand_latent", *case), 2, "expand_latent should return (k_nope, v)")


@latent.check("per-head keys", points=2,
              hint="view the weight as (n_heads, d_nope + d_v, d_c): each head's first d_nope rows make its keys")
def _latent_keys(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        case = _expand_case(rng)
        k, _ = _expand_call(student, case)
        expect_close(k, _expand_reference(*case)[0], "k_nope")


@latent.check("per-head values", points=1, hint="the last d_v rows of each head's block make its values")
def _latent_values(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        case = _expand_case(rng)
        _, v = _expand_call(student, case)
        expect_close(v, _expand_reference(*case)[1], "v")


cache = exercise("08.cache_update", "writing to a KV cache", functions=("cache_update",),
    protects=("minimoe.model.cache.KVCache.update",))


@cache.check("writes the new positions after the filled ones", points=2,
             hint="positions length .. length + new_len - 1 along the time axis (dim 2) take the new entries; nothing else changes")
def _cache_write(student: Student, rng: torch.Generator) -> None:
    b, h, t_max, d = _int(rng, 1, 3), _int(rng, 1, 4), _int(rng, 4, 20), _int(rng, 1, 8)
    store = torch.randn(b, h, t_max, d, generator=rng)
    length = 0
    for new_len in (_int(rng, 1, 3), 1, 1):
        new = torch.randn(b, h, new_len, d, generator=rng)
        out = expect_tuple(student.call("cache_update", store, new, length), 2,
                           "cache_update should return (cache, new_length)")
        want = store.clone()
        want[:, :, length:length + new_len] = new
        expect_close(out[0], want, f"the cache after writing {new_len} position(s) at {length}")
        expect_equal(out[1], length + new_len, "new_length")
        store, length = want, length + new_len


@cache.check("refuses to write past the end", points=1,
             hint="when length + new positions exceed the cache's size, raise ValueError instead of writing")
def _cache_full(student: Student, rng: torch.Generator) -> None:
    store = torch.zeros(1, 1, 4, 2)
    try:
        student.call("cache_update", store, torch.ones(1, 1, 2, 2), 3)
    except StudentError as e:
        if "ValueError" not in str(e):
            raise AssertionError(f"expected a ValueError, got: {e}") from None
        return
    raise AssertionError("writing 2 positions at 3 into a cache of 4 should raise ValueError")


absorbed = exercise("08.absorbed_decode", "absorbed MLA decoding for one head", functions=("absorbed_decode",))


def _head_case(rng: torch.Generator, length: int | None = None, loud: float = 1.0) -> tuple:
    """One head's inputs in float64: q_nope, q_rope (RoPE applied), c_kv (L, d_c), k_rope (L, d_rope), W_UK, W_UV."""
    d_nope, d_rope, d_c, d_v = _int(rng, 2, 16), 2 * _int(rng, 1, 8), _int(rng, 4, 32), _int(rng, 2, 16)
    n = length if length is not None else _int(rng, 2, 24)

    def randn(*shape):
        return torch.randn(*shape, generator=rng, dtype=torch.float64)

    return (randn(d_nope) * loud, randn(d_rope), randn(n, d_c), randn(n, d_rope),
            randn(d_nope, d_c) / d_c ** 0.5, randn(d_v, d_c) / d_c ** 0.5)


def _naive_decode(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv):
    """Expand the latents into keys and values, then attend: (y, q_lat, out_lat) of the absorbed form."""
    k_nope, v = c_kv @ w_uk.T, c_kv @ w_uv.T  # (L, d_nope), (L, d_v)
    scores = (k_nope @ q_nope + k_rope @ q_rope) / math.sqrt(q_nope.numel() + q_rope.numel())  # (L,)
    p = scores.softmax(dim=0)
    return p @ v, w_uk.T @ q_nope, p @ c_kv


def _absorbed_call(student: Student, case: tuple) -> tuple:
    return expect_tuple(student.call("absorbed_decode", *case), 3, "absorbed_decode should return (y, q_lat, out_lat)")


@absorbed.check("the output equals the naive form's", points=2,
                hint="scores = (c_kv @ q_lat + k_rope @ q_rope) scaled by 1/sqrt(d_nope + d_rope), the width of the "
                     "original query and key, not of the absorbed one; then y = W_UV @ (softmax(scores) @ c_kv)")
def _absorbed_output(student: Student, rng: torch.Generator) -> None:
    for _ in range(3):
        case = _head_case(rng)
        expect_close(_absorbed_call(student, case)[0], _naive_decode(*case)[0], "y")


@absorbed.check("the query moved into the latent space, the output read from the latents", points=1,
                hint="q_lat = W_UK^T q_nope has d_c numbers; out_lat is the softmax-weighted sum of the cached c_kv rows")
def _absorbed_latents(student: Student, rng: torch.Generator) -> None:
    for _ in range(2):
        case = _head_case(rng)
        _, q_lat, out_lat = _absorbed_call(student, case)
        _, want_q, want_out = _naive_decode(*case)
        expect_close(q_lat, want_q, "q_lat")
        expect_close(out_lat, want_out, "out_lat")


@absorbed.check("one cached token, and scores too large for a plain exp", points=1,
                hint="with one token the softmax is 1; with scores in the thousands exp() overflows: subtract the "
                     "largest score first (torch.softmax does)")
def _absorbed_edges(student: Student, rng: torch.Generator) -> None:
    case = _head_case(rng, length=1)
    expect_close(_absorbed_call(student, case)[0], _naive_decode(*case)[0], "y with one cached token")
    case = _head_case(rng, loud=3000.0)
    expect_close(_absorbed_call(student, case)[0], _naive_decode(*case)[0], "y with scores in the thousands")
