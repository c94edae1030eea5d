"""A key/value cache: each layer's keys and values of the tokens seen so far, preallocated."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values per layer, shape (batch, kv_heads, max_len, head_dim), filled left to right.

    ``length`` is how many positions hold data. ``update`` writes the new positions of one layer and
    returns every position so far; the model advances ``length`` once all layers have written.
    """

    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", v_head_dim: int | None = None):
        shape = (batch, kv_heads, max_len)
        self.k = [torch.zeros(*shape, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(*shape, v_head_dim or head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, KV, T_new, D) -> all keys and values so far: (B, KV, length + T_new, D)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; this step needs {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds for the positions filled so far."""
        per_position = sum(t[:, :, :1].numel() * t.element_size() for t in self.k + self.v)
        return per_position * self.length
