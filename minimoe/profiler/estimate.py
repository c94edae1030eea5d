"""Predict a training step's memory from the config, with arithmetic: ``estimate_memory``.

Parameters, gradients and optimizer state follow from the parameter count alone
(``minimoe.recipe.count_params``), and the profiler measures them to the byte:

- parameters: N · bytes(dtype); gradients: the same again (every parameter trains);
- AdamW: two moments per parameter (N · 2 · bytes(state dtype)) and one fp32 step counter per
  parameter *tensor*, which PyTorch keeps on the CPU (so on a GPU it costs the GPU nothing).

Activations are what autograd keeps from the forward for the backward. For minimoe's dense
transformer (chapter 03) they can be counted op by op; B·T = n tokens, d the width, f the
feed-forward width, H·D the attention width, V the vocabulary, a the bytes of the compute dtype:

- each RMSNorm keeps its normalized input (fp32), the reciprocal RMS (n, fp32) and its output
  (n·d·a); in a 16-bit dtype also the fp32 copy of its input and of its weight;
- attention keeps the rotated queries and keys, the values (repeated to H heads for GQA), the
  output and its reshaped copy (5 · n·H·D·a) and the log-sum-exp of each row (n·H, fp32);
- SwiGLU keeps the gate and up projections, silu(gate) and the product (4 · n·f·a);
- in fp32 the residual stream itself is kept (the norms read it): the embedding's output and two
  per block; in 16 bits the norms keep their fp32 copies instead;
- the loss keeps log-softmax of the logits (n·V, fp32); RoPE's cos and sin (T·D/2 each, fp32).

With activation checkpointing each block keeps only its input; backward rebuilds one block at a
time (``rebuilt``). MoE layers are estimated roughly (their activations depend on the dispatch
backend); ``MemoryEstimate.exact_activations`` says which case you have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from minimoe.config import ModelConfig, preset
from minimoe.recipe import count_params

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
OPTIMIZERS = ("adamw", "sgd", None)


def as_config(config: ModelConfig | str | dict) -> ModelConfig:
    """A ModelConfig from a config, a preset name or a dict of ModelConfig fields."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, dict):
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return ModelConfig(**config)
    raise TypeError(f"config: got {type(config).__name__}, need a ModelConfig, a preset name or a dict of fields")


def as_dtype(dtype: torch.dtype | str, name: str = "dtype") -> torch.dtype:
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ValueError(f"{name}: got {dtype!r}, need one of float32, bfloat16, float16")


def n_param_tensors(config: ModelConfig | str | dict) -> int:
    """How many parameter tensors minimoe's model of this config has (AdamW keeps a step counter for each)."""
    cfg = as_config(config)
    if cfg.is_moe:  # the MoE layer's own structure decides; build it without memory to count
        from minimoe.model import build_model

        with torch.device("meta"):
            return sum(1 for _ in build_model(cfg).parameters())
    per_block = 4 + 2 + 3  # W_Q, W_K, W_V, W_O; two norms; SwiGLU's three matrices
    return 1 + (0 if cfg.tie_embeddings else 1) + 1 + cfg.n_layers * per_block  # embedding, head, final norm


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    gradients: int
    optimizer: int
    activations: int  # kept for backward at the end of the forward
    kv_cache: int
    logits: int  # the model's output, held by the caller until the step ends
    rebuilt: int  # with checkpointing: one block's activations, rebuilt during backward
    exact_activations: bool  # True for minimoe's dense model; MoE layers are a rough estimate

    @property
    def steady(self) -> int:
        """What stays between steps: parameters, gradients, optimizer state, KV cache."""
        return self.parameters + self.gradients + self.optimizer + self.kv_cache

    @property
    def forward_end(self) -> int:
        """Alive when the forward ends (gradients freed by zero_grad(set_to_none=True) before it)."""
        return self.parameters + self.optimizer + self.kv_cache + self.activations + self.logits

    @property
    def peak_lower(self) -> int:
        """A lower bound on the step's peak: the larger of two moments the step must pass through.

        - the forward's end (plus, with checkpointing, one block rebuilt): the activations are all held;
        - the optimizer step: every gradient exists next to the weights and the optimizer state.

        What it leaves out, so the real peak lies above it: backward's working tensors (the gradients
        of the activations of the op being differentiated, the first parameter gradients) before the
        activations they replace are freed, and the optimizer's temporaries. Both depend on the order
        of the ops and on the optimizer's implementation (a per-tensor loop on a CPU, ``foreach``
        over whole groups on a GPU), so they are measured, not predicted.
        """
        return max(self.forward_end + self.rebuilt, self.steady)

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def _block_activations(cfg: ModelConfig, b: int, t: int, a: int, ffn_layer: bool, mixed: bool = False) -> int:
    n, d = b * t, cfg.d_model
    hd = cfg.n_heads * cfg.dim_head
    attention = 5 * n * hd * a + b * cfg.n_heads * t * 4
    if mixed:  # autocast: the residual stream and the norms stay fp32; each matmul reads a-byte copies
        kvd = cfg.kv_heads * cfg.dim_head
        norm = n * d * 4 + n * 4  # the normalized input and 1/rms; the fp32 output is read only through copies
        casts = 3 * n * d * a + (2 * d * hd + 2 * d * kvd) * a  # q, k, v's input copies; Wq, Wk, Wv, Wo's copies
        residual = 2 * n * d * 4
        if ffn_layer:  # gate, up, silu(gate), product; gate's and up's input copies; the three weights' copies
            f = cfg.dense_hidden
            ffn = 4 * n * f * a + 2 * n * d * a + 3 * d * f * a
        else:
            ffn = _moe_activations(cfg, n, a) + n * d * a
        return 2 * norm + casts + attention + residual + ffn
    low = a != 4
    norm = n * d * 4 + n * 4 + n * d * a + ((n * d * 4 + d * 4) if low else 0)
    residual = 0 if low else 2 * n * d * 4
    ffn = 4 * n * cfg.dense_hidden * a if ffn_layer else _moe_activations(cfg, n, a)
    return 2 * norm + attention + residual + ffn


def _moe_activations(cfg: ModelConfig, n: int, a: int) -> int:
    """MoE (rough): router logits and probabilities, shared SwiGLU, each assignment's SwiGLU and copies."""
    h, k, e, d = cfg.expert_hidden, cfg.top_k, cfg.n_routed_experts, cfg.d_model
    return 2 * n * e * 4 + 4 * n * cfg.n_shared_experts * h * a + n * k * (4 * h + 2 * d) * a


def estimate_memory(config: ModelConfig | str | dict, batch: int, seq_len: int, optimizer: str | None = "adamw",
                    dtype: torch.dtype | str = torch.float32, checkpointing: bool = False, kv_cache: int = 0,
                    state_dtype: torch.dtype | str | None = None, training: bool = True,
                    device: str = "cpu", autocast: torch.dtype | str | None = None) -> MemoryEstimate:
    """Bytes of each category for one training step (or, with ``training=False``, a forward pass).

    ``config``: a ModelConfig, a preset name or a dict of its fields; ``batch`` × ``seq_len`` tokens;
    ``optimizer``: "adamw", "sgd" (no state) or None; ``dtype``: the model's dtype; ``state_dtype``:
    AdamW's moments (default: the model's dtype); ``checkpointing``: activation checkpointing per
    block; ``kv_cache``: positions a KV cache holds for ``batch`` sequences (0: none);
    ``device``: "cpu" or "cuda" (AdamW's step counters live on the CPU either way).
    """
    cfg = as_config(config)
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}, need an int >= 1")
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len: got {seq_len}, the model is built for at most {cfg.max_seq_len}")
    if not isinstance(kv_cache, int) or isinstance(kv_cache, bool) or kv_cache < 0:
        raise ValueError(f"kv_cache: got {kv_cache!r}, need an int >= 0 (positions)")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: got {optimizer!r}, need one of {OPTIMIZERS}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: got {device!r}, need 'cpu' or 'cuda'")
    dtype = as_dtype(dtype)
    compute = as_dtype(autocast, "autocast") if autocast is not None else None
    if compute is not None and dtype != torch.float32:
        raise ValueError(f"autocast: the weights are the fp32 master copy under autocast; got dtype {dtype}, "
                         "need float32")
    state = as_dtype(state_dtype, "state_dtype") if state_dtype is not None else dtype
    a = dtype.itemsize
    n_params = count_params(cfg).total
    params = n_params * a
    grads = params if training else 0
    opt = 0
    if training and optimizer == "adamw":
        opt = 2 * n_params * state.itemsize + (4 * n_param_tensors(cfg) if device == "cpu" else 0)
    kv = 0
    if kv_cache:
        kv = kv_cache * batch * cfg.n_layers * 2 * cfg.kv_heads * cfg.dim_head * (compute or dtype).itemsize
    b, t, d, v = batch, seq_len, cfg.d_model, cfg.vocab_size
    n = b * t
    mixed = compute is not None
    c = compute.itemsize if mixed else a  # the bytes of a number the matmuls compute with
    low = not mixed and a != 4  # pure 16-bit training: the residual stream is 16-bit too
    logits = n * v * c
    acts = rebuilt = 0
    rope = 2 * t * (cfg.dim_head // 2) * 4  # cos and sin, fp32
    if training:
        blocks = [_block_activations(cfg, b, t, c, not (cfg.is_moe and i >= cfg.n_dense_layers), mixed)
                  for i in range(cfg.n_layers)]
        if mixed:  # the final norm as in a block; the head's input copy and weight copy
            final_norm = n * d * 4 + n * 4 + n * d * c + d * v * c
        else:
            final_norm = n * d * 4 + n * 4 + n * d * a + ((n * d * 4 + d * 4) if low else 0)
        tail = final_norm + n * v * 4 + 4 + rope  # + log-softmax (fp32), nll
        residual_bytes = 2 if low else 4
        if checkpointing:
            # each block keeps its input; with an fp32 residual stream the final norm also keeps the last block's output
            acts = cfg.n_layers * n * d * residual_bytes + (0 if low else n * d * 4) + tail
            rebuilt = max(blocks)
        else:
            acts = sum(blocks) + (0 if low else n * d * 4) + tail  # + the embedding's output, read by block 0's norm
    exact = not cfg.is_moe and (not mixed or cfg.attention in ("mha", "gqa"))
    return MemoryEstimate(params, grads, opt, acts, kv, logits, rebuilt, exact)
