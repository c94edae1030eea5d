"""The model: RMSNorm, rotary embeddings, attention, feed-forwards, blocks and the transformer."""

from minimoe.model.attention import Attention, attention_mask, causal_mask, reference_attention
from minimoe.model.cache import KVCache
from minimoe.model.latent import LatentAttention
from minimoe.model.layers import RMSNorm, SwiGLU, apply_rope, rope_angles
from minimoe.model.transformer import Block, ModelOutput, Transformer, build_model, param_groups, sample_positions

__all__ = [
    "Attention", "Block", "KVCache", "LatentAttention", "ModelOutput", "RMSNorm", "SwiGLU", "Transformer",
    "apply_rope", "attention_mask", "build_model", "causal_mask", "param_groups", "reference_attention",
    "rope_angles", "sample_positions",
]
