"""A key/value cache: each layer's keys and values of the tokens seen so far, allocated once.

One ``KVCache`` serves one generation: ``Transformer.new_cache`` allocates every layer's buffers
for the longest the generation can get, and each step writes its new positions in place, so
decoding allocates nothing per token. For multi-head latent attention (MLA) the cache holds one
row per token, the latent and the RoPE key side by side (``v_head_dim=0``: no separate values).
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys (and values) per layer, shape (batch, kv_heads, max_len, head_dim), filled left to right.

    ``length`` is how many positions hold data. ``update`` writes the new positions of one layer and
    returns every position so far; the model advances ``length`` once all layers have written.
    ``v_head_dim=0`` keeps keys only (MLA's latent rows); then ``update`` takes and returns ``v=None``.
    """

    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", v_head_dim: int | None = None):
        for name, v in (("n_layers", n_layers), ("batch", batch), ("kv_heads", kv_heads), ("max_len", max_len),
                        ("head_dim", head_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: got {v!r}, need an int >= 1")
        shape = (batch, kv_heads, max_len)
        v_dim = head_dim if v_head_dim is None else v_head_dim
        self.k = [torch.zeros(*shape, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(*shape, v_dim, dtype=dtype, device=device) for _ in range(n_layers)] if v_dim else []
        self.max_len = max_len
        self.length = 0
        self._rope: tuple | None = None  # ((dim, theta), (cos, sin)) for every position, made on first use

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k, v: (B, KV, T_new, D) -> all keys and values so far: (B, KV, length + T_new, D), views."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; this step needs {end}")
        if (v is None) != (not self.v):
            raise ValueError("v: this cache " + ("keeps values: pass v" if self.v else "keeps keys only: pass v=None"))
        self.k[layer][:, :, start:end] = k
        if v is None:
            return self.k[layer][:, :, :end], None
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def rope(self, dim: int, theta: float, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's cos and sin for positions ``start .. start+n-1``, (n, dim/2) each: computed once for
        every position the cache can hold, then sliced, so a decoding step computes no angles."""
        if start + n > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; this step needs {start + n}")
        if self._rope is None or self._rope[0] != (dim, theta):
            from minimoe.model.layers import rope_angles

            positions = torch.arange(self.max_len, device=self.k[0].device)
            self._rope = ((dim, theta), rope_angles(positions, dim, theta))
        cos, sin = self._rope[1]
        return cos[start:start + n], sin[start:start + n]

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds for the positions filled so far."""
        per_position = sum(t[:, :, :1].numel() * t.element_size() for t in self.k + self.v)
        return per_position * self.length

    @property
    def allocated_bytes(self) -> int:
        """Bytes of every buffer, filled or not: what the cache takes from memory."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
