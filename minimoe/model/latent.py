"""Multi-head latent attention (MLA), as in DeepSeek-V2 (arXiv 2405.04434) and V3.

Keys and values are not cached per head. Each token's hidden state is compressed into one small
latent ``c_kv`` (``kv_lora_rank`` = d_c wide) plus one shared RoPE key ``k_r`` (d_h^R wide); the
cache keeps only those, d_c + d_h^R numbers per token per layer, and every head's keys and values
are expanded from the latent by up-projections (W_UK, W_UV inside ``wkv_b``). RoPE cannot pass
through that compression, so a few "decoupled" channels per head carry position: the query's
``q_rope`` and the shared ``k_r``.

Two equal ways to compute it:

- naive: expand the latent to per-head keys and values, then ordinary attention;
- absorbed (for decoding): fold W_UK into the query and W_UV into the output, and attend over the
  latent directly, never materializing per-head keys and values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minimoe.config import ModelConfig
from minimoe.model.attention import causal_mask
from minimoe.model.cache import KVCache
from minimoe.model.layers import RMSNorm, apply_rope


class LatentAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.attention != "mla":
            raise ValueError(f"attention: got {cfg.attention!r}, this layer is 'mla'")
        d, h = cfg.d_model, cfg.n_heads
        self.n_heads, self.d_c = h, cfg.kv_lora_rank
        self.d_nope, self.d_rope, self.d_v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk = self.d_nope + self.d_rope
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False)  # W_DQ: d -> d_c'
            self.q_norm = RMSNorm(cfg.q_lora_rank)
            self.wq_b = nn.Linear(cfg.q_lora_rank, h * qk, bias=False)  # W_UQ and W_QR
        else:
            self.wq = nn.Linear(d, h * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.d_c + self.d_rope, bias=False)  # W_DKV and W_KR
        self.kv_norm = RMSNorm(self.d_c)
        self.wkv_b = nn.Linear(self.d_c, h * (self.d_nope + self.d_v), bias=False)  # W_UK and W_UV
        self.wo = nn.Linear(h * self.d_v, d, bias=False)
        self.impl = "naive"  # or "absorbed"

    def _queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q = q.view(b, t, self.n_heads, self.d_nope + self.d_rope).transpose(1, 2)  # (B, H, T, d_nope + d_rope)
        q_nope, q_rope = q.split([self.d_nope, self.d_rope], dim=-1)
        return q_nope, apply_rope(q_rope, cos, sin)

    def compress(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache stores: the latent (B, 1, T, d_c) and the shared RoPE key (B, 1, T, d_rope)."""
        c_kv, k_rope = self.wkv_a(x).split([self.d_c, self.d_rope], dim=-1)  # (B, T, d_c), (B, T, d_rope)
        c_kv = self.kv_norm(c_kv)[:, None]  # (B, 1, T, d_c)
        return c_kv, apply_rope(k_rope[:, None], cos, sin)  # (B, 1, T, d_rope)

    def up_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK: (H, d_nope, d_c) and W_UV: (H, d_v, d_c), views into ``wkv_b``."""
        w = self.wkv_b.weight.view(self.n_heads, self.d_nope + self.d_v, self.d_c)
        return w[:, : self.d_nope], w[:, self.d_nope:]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape  # x: (B, T, d_model); cos, sin: (T, d_rope/2)
        q_nope, q_rope = self._queries(x, cos, sin)  # (B, H, T, d_nope), (B, H, T, d_rope)
        c_kv, k_rope = self.compress(x, cos, sin)
        if cache is not None:
            c_kv, k_rope = cache.update(layer, c_kv, k_rope)  # (B, 1, T_all, d_c), (B, 1, T_all, d_rope)
        scale = 1.0 / math.sqrt(self.d_nope + self.d_rope)
        mask = causal_mask(t, c_kv.shape[2], x.device)  # (T, T_all)
        w_uk, w_uv = self.up_projections()
        if self.impl == "absorbed":
            q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # W_UK folded into the query: (B, H, T, d_c)
            scores = q_lat @ c_kv.transpose(-2, -1) + q_rope @ k_rope.transpose(-2, -1)  # (B, H, T, T_all)
            probs = (scores * scale).masked_fill(~mask, float("-inf")).softmax(dim=-1)
            out_lat = probs @ c_kv  # attend over the latent itself: (B, H, T, d_c)
            y = torch.einsum("bhtc,hvc->bhtv", out_lat, w_uv)  # W_UV folded into the output: (B, H, T, d_v)
        elif self.impl == "naive":
            k_nope = torch.einsum("bxsc,hnc->bhsn", c_kv, w_uk)  # per-head keys: (B, H, T_all, d_nope)
            v = torch.einsum("bxsc,hvc->bhsv", c_kv, w_uv)  # per-head values: (B, H, T_all, d_v)
            k = torch.cat([k_nope, k_rope.expand(-1, self.n_heads, -1, -1)], dim=-1)
            q = torch.cat([q_nope, q_rope], dim=-1)
            probs = ((q @ k.transpose(-2, -1)) * scale).masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = probs @ v  # (B, H, T, d_v)
        else:
            raise ValueError(f"impl: got {self.impl!r}, need 'naive' or 'absorbed'")
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v))
