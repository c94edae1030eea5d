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
  latent directly, never materializing per-head keys and values. It is multi-query attention:
  every head's query (d_c + d_h^R wide) reads the same one key row [c_kv | k_r] (576 wide in V3)
  and the same one value row c_kv (512 wide).

``impl="auto"`` (the default) trains and prefills without a cache naively and decodes absorbed
once a cache is in use; ``"naive"`` and ``"absorbed"`` force one form (tests hold them equal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        self.impl = "auto"  # or "naive" / "absorbed"

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
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d_model); cos, sin: (T, d_rope/2) or (B, 1, T, d_rope/2); ``mask`` (B, 1, T, T) or None."""
        b, t, _ = x.shape
        impl = self.impl
        if impl == "auto":
            impl = "absorbed" if cache is not None else "naive"
        if impl not in ("naive", "absorbed"):
            raise ValueError(f"impl: got {self.impl!r}, need 'auto', 'naive' or 'absorbed'")
        q_nope, q_rope = self._queries(x, cos, sin)  # (B, H, T, d_nope), (B, H, T, d_rope)
        c_kv, k_rope = self.compress(x, cos, sin)  # (B, 1, T, d_c), (B, 1, T, d_rope)
        if cache is not None:  # one row per token: [latent | RoPE key], read back as views
            rows, _ = cache.update(layer, torch.cat([c_kv, k_rope], dim=-1))  # (B, 1, T_all, d_c + d_rope)
            c_kv, k_rope = rows[..., : self.d_c], rows[..., self.d_c:]
        else:
            rows = None
        t_all = c_kv.shape[2]
        scale = 1.0 / math.sqrt(self.d_nope + self.d_rope)
        if mask is None and t_all != t and t > 1:  # new queries after cached positions: causal, offset by the past
            mask = causal_mask(t, t_all, x.device)
        causal = mask is None and t_all == t and t > 1
        w_uk, w_uv = self.up_projections()
        if impl == "absorbed":
            q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # W_UK folded into the query: (B, H, T, d_c)
            q = torch.cat([q_lat, q_rope], dim=-1)  # (B, H, T, d_c + d_rope)
            k = rows if rows is not None else torch.cat([c_kv, k_rope], dim=-1)  # (B, 1, T_all, d_c + d_rope)
            if t == 1 and mask is None:  # decoding: the H heads are H query rows against one key/value head
                out_lat = F.scaled_dot_product_attention(q.view(b, 1, self.n_heads, -1), k, c_kv, scale=scale)
                out_lat = out_lat.view(b, self.n_heads, 1, self.d_c)  # (B, H, 1, d_c)
            else:
                out_lat = F.scaled_dot_product_attention(q, k, c_kv, attn_mask=mask, is_causal=causal,
                                                         scale=scale, enable_gqa=True)  # (B, H, T, d_c)
            y = torch.einsum("bhtc,hvc->bhtv", out_lat, w_uv)  # W_UV folded into the output: (B, H, T, d_v)
        else:
            k_nope = torch.einsum("bxsc,hnc->bhsn", c_kv, w_uk)  # per-head keys: (B, H, T_all, d_nope)
            v = torch.einsum("bxsc,hvc->bhsv", c_kv, w_uv)  # per-head values: (B, H, T_all, d_v)
            k = torch.cat([k_nope, k_rope.expand(-1, self.n_heads, -1, -1)], dim=-1)
            q = torch.cat([q_nope, q_rope], dim=-1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)  # (B, H, T, d_v)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v))
