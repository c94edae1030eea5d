"""Causal multi-head attention (and grouped-query attention, where several heads share K and V)."""

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


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d + causal mask)·v, written out. q: (B, H, Tq, D); k, v: (B, H, Tk, D)."""
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
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
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape  # x: (B, T, d_model); cos, sin: (T, head_dim/2) for these T positions
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.wv(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, KV, T_past + T, D)
        if self.kv_heads != self.n_heads:  # each group of heads reads the same K and V
            repeat = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if self.impl == "reference":
            y = reference_attention(q, k, v)
        elif k.shape[2] == t:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new queries after cached positions: a causal mask offset by the past
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t, k.shape[2], x.device))
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))  # (B, T, d_model)
