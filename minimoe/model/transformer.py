"""The decoder-only transformer: embedding, blocks (attention + a pluggable feed-forward), head.

A block's feed-forward is any module mapping (B, T, d_model) to the same shape. It may also return
``(y, aux)`` with ``aux`` a dict: an entry named ``"loss"`` (a scalar tensor, already weighted) is
an auxiliary loss, which the model adds up into ``ModelOutput.aux_loss`` and the trainer adds to
the training loss; every other entry is a statistic, passed through in ``ModelOutput.aux``.
Nothing travels through global state. Chapter 04 plugs its mixture-of-experts layer in here.

A batch may say which positions are real and which sample each belongs to (``minimoe.data``'s
``token_mask`` and ``segments``): then attention stays inside each sample, positions restart at 0
for each sample, and a feed-forward that declares ``takes_token_mask = True`` (the MoE layer) is
handed the mask so that PAD is never routed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minimoe.config import ModelConfig, preset
from minimoe.model.attention import Attention, attention_mask
from minimoe.model.cache import KVCache
from minimoe.model.latent import LatentAttention
from minimoe.model.layers import RMSNorm, SwiGLU, rope_angles

FFNFactory = Callable[[int, ModelConfig], nn.Module]


def default_ffn(layer: int, cfg: ModelConfig) -> nn.Module:
    """A dense SwiGLU, or for the MoE layers of an MoE config, minimoe.moe's layer."""
    if cfg.is_moe and layer >= cfg.n_dense_layers:
        try:
            from minimoe.moe import MoELayer  # chapter 04
        except ImportError:
            raise ValueError(f"config {cfg.name!r} has experts, and minimoe.moe (chapter 04) is not part of "
                             "this version yet; pass ffn_factory= to build its MoE layers") from None
        return MoELayer(cfg)
    return SwiGLU(cfg.d_model, cfg.dense_hidden)


class Block(nn.Module):
    """x + attention(norm(x)), then x + ffn(norm(x)): the pre-norm residual block."""

    def __init__(self, cfg: ModelConfig, ffn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = LatentAttention(cfg) if cfg.attention == "mla" else Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None,
                token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, mask)  # (B, T, d_model)
        h = self.ffn_norm(x)
        if getattr(self.ffn, "takes_token_mask", False):
            out = self.ffn(h, token_mask=token_mask, stats=cache is None)  # decoding reads no statistics
        else:
            out = self.ffn(h)
        y, aux = out if isinstance(out, tuple) else (out, {})
        return x + y, aux


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    aux_loss: torch.Tensor  # scalar: the sum of the parts' auxiliary losses
    aux: list[dict] = field(default_factory=list)  # per block, what its feed-forward reported
    ce: torch.Tensor | None = None  # cross-entropy, when targets were given
    loss: torch.Tensor | None = None  # ce + aux_loss, when targets were given


class Transformer(nn.Module):
    checkpointing: bool = False  # chapter 07: True keeps only each block's input for backward and recomputes the rest

    def __init__(self, cfg: ModelConfig, ffn_factory: FFNFactory = default_ffn):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, ffn_factory(i, cfg)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; projections into the residual stream scaled by 1/√(2·layers) (GPT-2)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w_down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("weight"):
                nn.init.ones_(p)

    @property
    def rope_dim(self) -> int:
        """Channels per head that RoPE rotates: the whole head, or MLA's decoupled part."""
        return self.cfg.qk_rope_head_dim if self.cfg.attention == "mla" else self.cfg.dim_head

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache. For MLA it holds, per token and layer, the latent (d_c) and the RoPE key (d_h^R)."""
        p = next(self.parameters())
        cfg, length = self.cfg, max_len or self.cfg.max_seq_len
        if cfg.attention == "mla":  # one row per token: [latent | RoPE key]
            return KVCache(cfg.n_layers, batch, 1, length, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                           dtype=p.dtype, device=p.device, v_head_dim=0)
        return KVCache(cfg.n_layers, batch, cfg.kv_heads, length, cfg.dim_head, dtype=p.dtype, device=p.device)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                token_mask: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> ModelOutput:
        """tokens: (B, T) ids. With ``targets`` (B, T), the cross-entropy over positions where
        ``loss_mask`` (B, T) is true (all positions without one). With ``cache``, the tokens continue
        what the cache holds.

        ``token_mask`` (B, T) bool marks real tokens (False: PAD): PAD is seen by no other position,
        routed to no expert and counted in no statistic. ``segments`` (B, T) int says which packed
        sample each position belongs to (-1 on PAD): attention stays inside a sample and positions
        restart at 0 for each. Both are for whole batches, not for decoding with a cache.
        """
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int, torch.int32):
            raise ValueError(f"tokens: got shape {tuple(tokens.shape)} {tokens.dtype}, need (batch, time) integer ids")
        b, t = tokens.shape
        for name, m, kinds in (("token_mask", token_mask, (torch.bool,)),
                               ("segments", segments, (torch.long, torch.int, torch.int32))):
            if m is None:
                continue
            if not isinstance(m, torch.Tensor) or tuple(m.shape) != (b, t) or m.dtype not in kinds:
                got = f"shape {tuple(m.shape)} {m.dtype}" if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(f"{name}: got {got}, need ({b}, {t}) {kinds[0]} like tokens")
            if cache is not None:
                raise ValueError(f"{name}: not supported with a cache (decoding batches hold no PAD)")
        if segments is not None and token_mask is None:
            token_mask = segments >= 0
        start = cache.length if cache is not None else 0
        if start + t > self.cfg.max_seq_len:
            raise ValueError(f"tokens: {start + t} positions, the model was built for at most {self.cfg.max_seq_len}")
        if cache is not None:  # the cache keeps the angles of every position it can hold
            cos, sin = cache.rope(self.rope_dim, self.cfg.rope_theta, start, t)  # (T, rope_dim/2)
        elif segments is not None or token_mask is not None:
            positions = sample_positions(segments, token_mask)  # (B, T): restarting at each sample
            cos, sin = rope_angles(positions, self.rope_dim, self.cfg.rope_theta)  # (B, T, rope_dim/2)
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, rope_dim/2): broadcast over heads
        else:
            cos, sin = rope_angles(torch.arange(t, device=tokens.device), self.rope_dim, self.cfg.rope_theta)
        mask = attention_mask(segments, token_mask)  # (B, 1, T, T) or None (causal)
        x = self.embed(tokens)  # (B, T, d_model)
        aux_loss = x.new_zeros((), dtype=torch.float32)
        auxes = []
        for i, block in enumerate(self.blocks):
            if self.checkpointing and cache is None and torch.is_grad_enabled():
                # Activation checkpointing: the block is run again during backward. early_stop=False
                # rebuilds the whole block, so its forward hooks fire in pairs (chapter 07 uses them).
                x, aux = checkpoint(block, x, cos, sin, None, i, mask, token_mask, use_reentrant=False,
                                    early_stop=False)
            else:
                x, aux = block(x, cos, sin, cache, i, mask, token_mask)
            if "loss" in aux:
                aux_loss = aux_loss + aux["loss"]
            auxes.append(aux)
        if cache is not None:
            cache.advance(t)
        logits = self.head(self.norm(x))  # (B, T, vocab)
        out = ModelOutput(logits, aux_loss, auxes)
        if targets is not None:
            out.ce = cross_entropy(logits, targets, loss_mask)
            out.loss = out.ce + aux_loss
        return out


def sample_positions(segments: torch.Tensor | None, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Each position's place in its own sample, (B, T) int64: 0 at every sample's first token.

    With ``segments``, counting restarts wherever the segment changes; with only ``token_mask``,
    the real tokens of a row are numbered 0, 1, 2, ... (PAD keeps the number before it).
    """
    if segments is not None:
        t = segments.shape[1]
        idx = torch.arange(t, device=segments.device).expand_as(segments)  # (B, T)
        starts = torch.ones_like(segments, dtype=torch.bool)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]  # (B, T): a sample begins here
        first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T)
        return idx - first
    return (token_mask.long().cumsum(dim=1) - 1).clamp_min(0)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions ``loss_mask`` (B, T) marks (all, without one)."""
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B·T,)
    if loss_mask is None:
        return per_token.mean()
    mask = loss_mask.flatten().to(per_token.dtype)
    if mask.sum() == 0:
        raise ValueError("loss_mask: no position is marked to score")
    return (per_token * mask).sum() / mask.sum()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: weight decay on matrices, none on vectors (norm weights)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(cfg: ModelConfig | str, seed: int = 0, ffn_factory: FFNFactory = default_ffn) -> Transformer:
    """A freshly initialised model, the same for the same seed."""
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(cfg, ffn_factory)
