"""The model: RMSNorm, rotary embeddings, attention, feed-forwards, blocks and the transformer."""

from minimoe.model.attention import Attention, causal_mask, reference_attention
from minimoe.model.cache import KVCache
from minimoe.model.latent import LatentAttention
from minimoe.model.layers import RMSNorm, SwiGLU, apply_rope, rope_angles
from minimoe.model.transformer import Block, ModelOutput, Transformer, build_model

__all__ = [
    "Attention", "Block", "KVCache", "LatentAttention", "ModelOutput", "RMSNorm", "SwiGLU", "Transformer",
    "apply_rope", "build_model", "causal_mask", "reference_attention", "rope_angles",
]
