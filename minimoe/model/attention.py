"""Causal multi-head attention (and grouped-query attention, where several heads share K and V).

``attention_mask`` builds the (B, 1, T, T) mask of a batch with packed samples or PAD: causal, and
confined to each sample (block-diagonal). Without one, attention is plain causal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ModelConfig
from minimoe.model.cache import KVCache
from minimoe.model.layers import apply_rope


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where a query may look. The queries are the last q_len positions."""
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset  # (q_len, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, k_len)
    return k_pos <= q_pos


def attention_mask(segments: torch.Tensor | None = None, token_mask: torch.Tensor | None = None
                   ) -> torch.Tensor | None:
    """Which key each query may see, (B, 1, T, T) bool, or None for plain causal attention.

    ``segments`` (B, T) int: packed samples; a query sees only earlier keys of its own sample.
    ``token_mask`` (B, T) bool: keys marked False (PAD) are seen by no other position. Every position
    always sees itself, so no row of the softmax is empty.
    """
    if segments is None and token_mask is None:
        return None
    ref = segments if segments is not None else token_mask
    t = ref.shape[1]
    mask = causal_mask(t, t, ref.device)[None]  # (1, T, T)
    if segments is not None:
        mask = mask & (segments[:, :, None] == segments[:, None, :])  # (B, T, T) block-diagonal
    if token_mask is not None:
        eye = torch.eye(t, dtype=torch.bool, device=ref.device)[None]
        mask = mask & (token_mask[:, None, :] | eye)  # PAD keys seen only by themselves
    return mask[:, None]  # (B, 1, T, T)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ/√d + mask)·v, written out. q: (B, H, Tq, D); k, v: (B, H, Tk, D).

    ``mask``: (B, 1, Tq, Tk) bool (True: may look), default causal."""
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is None:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)  # (B, H, Tq, D)


class Attention(nn.Module):
    """Multi-head attention with RoPE; ``n_kv_heads < n_heads`` makes it grouped-query attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.attention not in ("mha", "gqa"):
            raise ValueError(f"attention: got {cfg.attention!r}; this layer does 'mha' and 'gqa'")
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dim_head
        d = cfg.d_model
        self.wq = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.impl = "sdpa"  # or "reference": the written-out path, for tests and teaching

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d_model); cos, sin: (T, head_dim/2) or (B, 1, T, head_dim/2) for these T positions;
        ``mask`` (B, 1, T, T) bool from ``attention_mask``, or None for causal."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.wv(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, KV, T_past + T, D)
        gqa = self.kv_heads != self.n_heads  # each group of heads reads the same K and V
        if self.impl == "reference":
            if gqa:  # the written-out path copies K and V to every head of the group
                repeat = self.n_heads // self.kv_heads
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            y = reference_attention(q, k, v, mask)
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        elif k.shape[2] == t:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif t == 1:  # one new token after the cached ones: it may see every key
            # The G query heads of a group become G query rows against their one K/V head: the
            # cache is read as it is, never copied out per head (a view, then one SDPA call).
            g = self.n_heads // self.kv_heads
            y = F.scaled_dot_product_attention(q.view(b, self.kv_heads, g, self.head_dim), k, v)  # (B, KV, G, D)
            y = y.view(b, self.n_heads, 1, self.head_dim)  # (B, H, 1, D)
        else:  # new queries after cached positions: a causal mask offset by the past
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t, k.shape[2], x.device),
                                               enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))  # (B, T, d_model)
