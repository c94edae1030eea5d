"""The recipe: what a model costs to bake, in plain arithmetic (no torch needed).

- ``count_params(config)``: parameters by component, total and activated per token.
- ``training_flops``: 6·N·D (Kaplan et al., arXiv 2001.08361), and a finer count with the
  attention term; ``training_cost``: GPU-hours and dollars from a GPU's peak, an MFU and a price;
  ``implied_mfu``: the reverse, from a reported GPU-hour figure.
- ``DEEPSEEK_V3``: Table 1 of the DeepSeek-V3 report (arXiv 2412.19437) and what follows from it.
- ``chinchilla_optimal``: compute-optimal parameters and tokens (Hoffmann et al., arXiv 2203.15556:
  about 20 tokens per parameter).
- ``inference_flops_per_token`` and ``answer_cost``: 2·N_activated FLOPs per generated token.
- the KV cache: bytes per token (``kv_bytes_per_token``), the FLOPs and bytes of one decoding
  step's attention (``decode_attention_cost``), and what is left for it once the weights are in
  memory (``serving_budget``).
- ``decode_step`` and ``answer_time``: the decoding roofline (chapter 10): bytes read per new token
  (weights, and the KV cache of ``kv_bytes_per_token``) over the memory bandwidth, against FLOPs
  over the peak; ``measure_bandwidth`` and ``measure_matmul_flops`` measure both on this machine
  (these two import torch when called).

Conventions: N is counted in parameters (not bytes); "activated" means every parameter a token's
forward pass reads: one row of the embedding table, all attention, norm and dense parameters, the
router, the shared experts, its top-k routed experts and the whole output head.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from minimoe.config import ModelConfig, preset

# --- parameter counts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model by component. ``routed_experts_active`` is the per-token share."""

    embedding: int
    output_head: int
    attention: int
    dense_ffn: int
    shared_experts: int
    routed_experts: int
    router: int
    norms: int
    mtp: int
    routed_experts_active: int
    d_model: int

    @property
    def total(self) -> int:
        """Every parameter of the main model (the MTP module is reported apart, as DeepSeek does)."""
        return (self.embedding + self.output_head + self.attention + self.dense_ffn + self.shared_experts
                + self.routed_experts + self.router + self.norms)

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    @property
    def activated(self) -> int:
        """Parameters one token reads on its way through the main model."""
        return (self.d_model + self.output_head + self.attention + self.dense_ffn + self.shared_experts
                + self.routed_experts_active + self.router + self.norms)

    @property
    def non_embedding(self) -> int:
        """Total minus the input embedding table and the output head (Kaplan's N)."""
        return self.total - self.embedding - self.output_head

    def by_component(self) -> dict[str, int]:
        d = asdict(self)
        d.pop("d_model")
        d.pop("routed_experts_active")
        return d


def attention_params(cfg: ModelConfig) -> int:
    """Parameters of one attention layer (MLA's latent RMSNorms included)."""
    d, h = cfg.d_model, cfg.n_heads
    if cfg.attention in ("mha", "gqa"):
        dh, kv = cfg.dim_head, cfg.kv_heads
        return d * h * dh + 2 * d * kv * dh + h * dh * d  # W_Q, W_K, W_V, W_O
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    if cfg.q_lora_rank:
        # W_DQ (d -> d_c'), its RMSNorm, W_UQ (d_c' -> heads · (nope + rope))
        q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * h * qk
    else:
        q = d * h * qk
    # W_DKV and the shared RoPE key W_KR (d -> d_c + d_h^R), the latent's RMSNorm,
    # W_UK and W_UV (d_c -> heads · (nope + v)), and W_O (heads · v -> d).
    kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank
    kv += cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    out = h * cfg.v_head_dim * d
    return q + kv + out


def swiglu_params(d_model: int, hidden: int) -> int:
    """A SwiGLU feed-forward: gate and up (d -> hidden), down (hidden -> d), no biases."""
    return 3 * d_model * hidden


def count_params(cfg: ModelConfig | str) -> ParamCount:
    """Count a model's parameters from its config (a ``ModelConfig`` or a preset name)."""
    if isinstance(cfg, str):
        cfg = preset(cfg)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg: got {type(cfg).__name__}, need a ModelConfig or a preset name")
    d = cfg.d_model
    attn = attention_params(cfg)
    expert = swiglu_params(d, cfg.expert_hidden)
    n_moe = cfg.n_moe_layers
    n_dense = cfg.n_layers - n_moe
    moe_block = attn + cfg.n_shared_experts * expert + cfg.n_routed_experts * expert + d * cfg.n_routed_experts
    dense_block = attn + swiglu_params(d, cfg.dense_hidden)
    mtp = 0
    if cfg.mtp_depth:
        block = (moe_block if cfg.is_moe else dense_block) + 2 * d
        mtp = cfg.mtp_depth * (block + 2 * d * d + 3 * d)  # block, projection 2d -> d, three RMSNorms
    return ParamCount(
        embedding=cfg.vocab_size * d,
        output_head=0 if cfg.tie_embeddings else cfg.vocab_size * d,
        attention=cfg.n_layers * attn,
        dense_ffn=n_dense * swiglu_params(d, cfg.dense_hidden),
        shared_experts=n_moe * cfg.n_shared_experts * expert,
        routed_experts=n_moe * cfg.n_routed_experts * expert,
        router=n_moe * d * cfg.n_routed_experts,
        norms=cfg.n_layers * 2 * d + d,
        mtp=mtp,
        routed_experts_active=n_moe * cfg.top_k * expert,
        d_model=d,
    )


# --- the KV cache --------------------------------------------------------------------------------


def kv_elements_per_token(cfg: ModelConfig | str) -> int:
    """Numbers the KV cache keeps per token, over all layers.

    Multi-head and grouped-query attention keep a key and a value per KV head
    (2 · kv_heads · head_dim per layer); MLA keeps the latent and the RoPE key (d_c + d_h^R per
    layer, DeepSeek-V2 §2.1).
    """
    if isinstance(cfg, str):
        cfg = preset(cfg)
    if cfg.attention == "mla":
        per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    else:
        per_layer = 2 * cfg.kv_heads * cfg.dim_head
    return cfg.n_layers * per_layer


def kv_bytes_per_token(cfg: ModelConfig | str, bytes_per_element: int = 2) -> int:
    """KV-cache bytes per token (2 bytes per number in bf16). DeepSeek-V3: 61 x 576 x 2 = 70,272."""
    if not isinstance(bytes_per_element, int) or bytes_per_element < 1:
        raise ValueError(f"bytes_per_element: got {bytes_per_element!r}, need a positive int")
    return kv_elements_per_token(cfg) * bytes_per_element


def max_context(cfg: ModelConfig | str, budget_bytes: float, batch: int = 1, bytes_per_element: int = 2) -> int:
    """The longest context whose KV cache fits ``budget_bytes`` for ``batch`` sequences."""
    _positive("budget_bytes", budget_bytes)
    _positive("batch", batch)
    return int(budget_bytes // (batch * kv_bytes_per_token(cfg, bytes_per_element)))


def decode_attention_cost(cfg: ModelConfig | str, context: int, absorbed: bool = True,
                          bytes_per_element: int = 2) -> dict[str, float]:
    """One new token's attention over ``context`` cached tokens: one layer, one sequence.

    Returns the FLOPs of attending (scores and the weighted sum, 2 per multiply-add; the softmax
    and the projections into and out of attention, which do not grow with the context, are left
    out), the bytes of cache read, and their ratio, the arithmetic intensity (FLOPs per byte):

    - MHA and GQA: each of H query heads scores the L keys of its KV head and sums their values,
      4·H·L·d_h FLOPs, reading 2·KV·L·d_h numbers (intensity H/KV per 2 bytes: 1 FLOP/B for MHA);
    - MLA, absorbed: multi-query attention over the latent, every head's query against one key row
      [c_kv | k_R] (d_c + d_R wide) and one value row c_kv (d_c wide): 2·H·L·(2·d_c + d_R) FLOPs,
      reading L·(d_c + d_R) numbers;
    - MLA, naive (``absorbed=False``): first expand every cached latent into each head's keys and
      values, 2·L·d_c·H·(d_nope + d_v) FLOPs, then attend: 2·H·L·(d_nope + d_R + d_v).
    """
    if isinstance(cfg, str):
        cfg = preset(cfg)
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise ValueError(f"context: got {context!r}, need an int >= 1")
    if not isinstance(bytes_per_element, int) or bytes_per_element < 1:
        raise ValueError(f"bytes_per_element: got {bytes_per_element!r}, need a positive int")
    h, n = cfg.n_heads, context
    if cfg.attention == "mla":
        dc, dr, dn, dv = cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.qk_nope_head_dim, cfg.v_head_dim
        if absorbed:
            flops = 2 * h * n * (dc + dr) + 2 * h * n * dc
        else:
            flops = 2 * n * dc * h * (dn + dv) + 2 * h * n * (dn + dr) + 2 * h * n * dv
        numbers = n * (dc + dr)
    else:
        flops = 4 * h * n * cfg.dim_head
        numbers = 2 * cfg.kv_heads * n * cfg.dim_head
    cache_bytes = numbers * bytes_per_element
    return {"flops": float(flops), "cache_bytes": float(cache_bytes), "intensity": flops / cache_bytes}


def serving_budget(cfg: ModelConfig | str, n_gpus: int, memory_per_gpu: float = 80 * 2**30,
                   weight_bytes: float = 1.0, kv_bytes_per_element: int = 2) -> dict[str, float]:
    """What is left for the KV cache when ``n_gpus`` GPUs of ``memory_per_gpu`` bytes hold the model.

    The weights are every parameter of the main model (the MTP module, which serving can leave out,
    is not counted) at ``weight_bytes`` each: 1 for fp8 (DeepSeek-V3 ships its weights in fp8), 2 for
    bf16. Activations, CUDA contexts, communication buffers and fragmentation are left out too, so
    ``kv_tokens`` (cached tokens over all sequences) is an upper bound; ``left_bytes`` < 0 means the
    weights alone do not fit.
    """
    _positive("n_gpus", n_gpus)
    _positive("memory_per_gpu", memory_per_gpu)
    _positive("weight_bytes", weight_bytes)
    memory = n_gpus * memory_per_gpu
    weights = count_params(cfg).total * weight_bytes
    left = memory - weights
    tokens = int(left // kv_bytes_per_token(cfg, kv_bytes_per_element)) if left > 0 else 0
    return {"memory_bytes": float(memory), "weight_bytes": float(weights), "left_bytes": float(left),
            "kv_tokens": tokens}


# --- GPUs, FLOPs, hours, dollars -------------------------------------------------------------


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float  # dense 16-bit peak, FLOP/s: bf16, or fp16 where the chip has no bf16 (see half)
    fp8_flops: float | None
    memory_gb: float
    note: str = ""
    has_bf16: bool = True  # False: the 16-bit peak above is fp16's (a T4 has no bf16 units)
    bandwidth: float = 0.0  # memory bandwidth, bytes/s

    @property
    def half(self) -> str:
        """The 16-bit format ``bf16_flops`` is the peak of: ``"bf16"``, or ``"fp16"`` on a chip without bf16."""
        return "bf16" if self.has_bf16 else "fp16"


# Dense (no sparsity) tensor-core peaks and memory bandwidths from the vendors' datasheets.
GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM", 989.4e12, 1978.9e12, 80, bandwidth=3.35e12),
    "h800": GPU("H800 SXM", 989.4e12, 1978.9e12, 80, "the H100's compute with a cut-down interconnect",
                bandwidth=3.35e12),
    "h200": GPU("H200 SXM", 989.4e12, 1978.9e12, 141, bandwidth=4.8e12),
    "a100": GPU("A100 SXM", 312e12, None, 80, bandwidth=2.039e12),
    "l4": GPU("L4", 121e12, 242e12, 24, bandwidth=300e9),
    "t4": GPU("T4", 65e12, None, 16, "no bf16: fp16 tensor cores", has_bf16=False, bandwidth=320e9),
    "b200": GPU("B200", 2250e12, 4500e12, 192, bandwidth=8e12),
}


def gpu(name: str) -> GPU:
    key = name.lower()
    if key not in GPUS:
        raise ValueError(f"gpu: got {name!r}, need one of {', '.join(GPUS)}")
    return GPUS[key]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: got {value!r}, need a positive number")
    return float(value)


def _mfu(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"mfu: got {value!r}, need a fraction in (0, 1]")
    return float(value)


def training_flops(n_params: float, n_tokens: float) -> float:
    """C ≈ 6·N·D: 2 FLOPs per parameter per token forward, 4 backward (Kaplan et al. 2020)."""
    return 6.0 * _positive("n_params", n_params) * _positive("n_tokens", n_tokens)


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token of the attention scores and the weighted sum, which 6·N leaves out.

    Forward, per layer and head: q·k over the context (2·ctx·d_qk) and the weighted sum of values
    (2·ctx·d_v); a causal mask halves the average context. Backward costs twice the forward.
    """
    _positive("seq_len", seq_len)
    if cfg.attention == "mla":
        d_qk, d_v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        d_qk = d_v = cfg.dim_head
    ctx = seq_len / 2 if causal else seq_len
    forward = cfg.n_layers * cfg.n_heads * 2 * ctx * (d_qk + d_v)
    return 3 * forward


def training_flops_detailed(cfg: ModelConfig, n_tokens: float, seq_len: int) -> dict[str, float]:
    """6·N_activated·D, the attention term, and their sum."""
    n = count_params(cfg).activated
    dense = training_flops(n, n_tokens)
    attn = attention_flops_per_token(cfg, seq_len) * _positive("n_tokens", n_tokens)
    return {"6ND": dense, "attention": attn, "total": dense + attn}


@dataclass(frozen=True)
class Cost:
    flops: float
    gpu_hours: float
    dollars: float
    peak_flops: float
    mfu: float
    price_per_gpu_hour: float

    def wall_days(self, n_gpus: int) -> float:
        """Days on ``n_gpus`` GPUs working at once."""
        return self.gpu_hours / _positive("n_gpus", n_gpus) / 24


def training_cost(flops: float, peak_flops: float, mfu: float, price_per_gpu_hour: float) -> Cost:
    """GPU-hours = FLOPs / (peak · MFU) / 3600 s; dollars = GPU-hours · price."""
    flops, peak = _positive("flops", flops), _positive("peak_flops", peak_flops)
    mfu = _mfu(mfu)
    price = _positive("price_per_gpu_hour", price_per_gpu_hour) if price_per_gpu_hour != 0 else 0.0
    hours = flops / (peak * mfu) / 3600
    return Cost(flops, hours, hours * price, peak, mfu, price)


def implied_mfu(flops: float, gpu_hours: float, peak_flops: float) -> float:
    """The model-FLOPs utilization a reported GPU-hour figure implies: FLOPs / (hours · 3600 · peak)."""
    return _positive("flops", flops) / (_positive("gpu_hours", gpu_hours) * 3600 * _positive("peak_flops", peak_flops))


# --- DeepSeek-V3, reproduced -----------------------------------------------------------------

DEEPSEEK_V3 = {
    # arXiv 2412.19437, Table 1 (H800 GPU-hours) and §1.
    "gpu_hours": {"pre-training": 2664e3, "context extension": 119e3, "post-training": 5e3},
    "price_per_gpu_hour": 2.0,
    "tokens": 14.8e12,
    "gpu_hours_per_trillion_tokens": 180e3,
    "n_gpus": 2048,
    "total_params_reported": 671e9,
    "activated_params_reported": 37e9,
    "left_out": (
        "prior research and ablation experiments on architectures, algorithms and data "
        "(the report says so itself)",
        "buying or building the cluster of 2,048 H800s, its power, cooling and networking",
        "the people, and the data pipeline that made 14.8T tokens",
        "failed and restarted runs beyond the one reported",
    ),
}


def deepseek_v3_bill() -> dict[str, float]:
    """Table 1 of the V3 report, and what it implies under 6·N·D."""
    hours = DEEPSEEK_V3["gpu_hours"]
    total = sum(hours.values())
    n = count_params("deepseek-v3").activated
    flops = training_flops(n, DEEPSEEK_V3["tokens"])
    h800 = gpu("h800")
    return {
        "total_gpu_hours": total,
        "dollars": total * DEEPSEEK_V3["price_per_gpu_hour"],
        "pretraining_hours_from_rate": DEEPSEEK_V3["gpu_hours_per_trillion_tokens"] * DEEPSEEK_V3["tokens"] / 1e12,
        "pretraining_flops_6ND": flops,
        "mfu_vs_bf16_peak": implied_mfu(flops, hours["pre-training"], h800.bf16_flops),
        "mfu_vs_fp8_peak": implied_mfu(flops, hours["pre-training"], h800.fp8_flops),
        "wall_days_on_2048": total / DEEPSEEK_V3["n_gpus"] / 24,
    }


# --- Chinchilla, dense vs MoE, inference ---------------------------------------------------------

CHINCHILLA_TOKENS_PER_PARAM = 20.0


def chinchilla_optimal(flops: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> tuple[float, float]:
    """Compute-optimal (parameters, tokens) for a budget: C = 6·N·D with D = 20·N, so N = sqrt(C / 120)."""
    flops, r = _positive("flops", flops), _positive("tokens_per_param", tokens_per_param)
    n = math.sqrt(flops / (6 * r))
    return n, r * n


def tokens_per_param(n_tokens: float, n_params: float) -> float:
    return _positive("n_tokens", n_tokens) / _positive("n_params", n_params)


def weight_bytes(n_params: float, bytes_per_param: float = 2.0) -> float:
    """Bytes to hold the weights (2 per parameter in bf16)."""
    return _positive("n_params", n_params) * _positive("bytes_per_param", bytes_per_param)


def training_state_bytes(n_params: float) -> float:
    """Mixed-precision AdamW: bf16 weights and gradients, fp32 master weights and two moments = 16 B/param."""
    return 16.0 * _positive("n_params", n_params)


def inference_flops_per_token(n_activated: float) -> float:
    """2·N_activated FLOPs per generated token (one multiply and one add per parameter)."""
    return 2.0 * _positive("n_activated", n_activated)


def answer_cost(n_activated: float, n_tokens: int, peak_flops: float, mfu: float, price_per_gpu_hour: float) -> Cost:
    """FLOPs, GPU-hours and dollars to generate an answer of ``n_tokens`` tokens."""
    flops = inference_flops_per_token(n_activated) * _positive("n_tokens", n_tokens)
    return training_cost(flops, peak_flops, mfu, price_per_gpu_hour)


# --- the decoding roofline ------------------------------------------------------------------------
#
# Generating a token runs the model on one new position per sequence. Its arithmetic is small
# (2 FLOPs per activated parameter, plus attention over the context), but every weight it uses and
# the whole KV cache of the context must come in from memory. A step takes at least
# max(bytes read / memory bandwidth, FLOPs / peak FLOP/s): the roofline (Williams et al. 2009).
# At batch 1 the bytes win by far; a batch of sequences shares the weights it reads, so batching is
# how servers climb towards the compute roof, while each sequence still reads its own KV cache.


def experts_touched(n_experts: int, top_k: int, batch: int) -> float:
    """Expected distinct experts a layer reads for ``batch`` tokens that each choose ``top_k`` of
    ``n_experts`` uniformly: E · (1 − (1 − k/E)^batch). One token reads k; a large batch reads them all."""
    if not isinstance(n_experts, int) or n_experts < 1 or not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
        raise ValueError(f"n_experts, top_k: got {n_experts!r}, {top_k!r}, need 1 <= top_k <= n_experts")
    _positive("batch", batch)
    return n_experts * (1 - (1 - top_k / n_experts) ** batch)


def decode_attention_flops(cfg: ModelConfig | str, position: int) -> float:
    """Forward FLOPs of attention for one new token after ``position`` cached ones (all layers and heads).

    Scores and weighted sum over position + 1 keys: 2·ctx·(d_qk + d_v) per head. MLA decodes in the
    absorbed form (chapter 08): scores against the cached latent and RoPE key (d_c + d_h^R), the
    weighted sum over the latent (d_c).
    """
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise ValueError(f"position: got {position!r}, need an int >= 0 (tokens already in the cache)")
    ctx = position + 1
    if cfg.attention == "mla":
        per_head = 2 * ctx * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + 2 * ctx * cfg.kv_lora_rank
    else:
        per_head = 2 * ctx * 2 * cfg.dim_head
    return float(cfg.n_layers * cfg.n_heads * per_head)


@dataclass(frozen=True)
class DecodeStep:
    """One decoding step of ``batch`` sequences, each adding a token after ``position`` cached ones."""

    batch: int
    position: int
    weight_bytes: float  # weights read once for the whole batch (experts: those the batch touches)
    kv_bytes: float  # every sequence's cache up to ``position``
    flops: float
    memory_s: float  # (weight_bytes + kv_bytes) / bandwidth
    compute_s: float  # flops / peak

    @property
    def seconds(self) -> float:
        """The roofline's time for the step: the larger of the memory time and the compute time."""
        return max(self.memory_s, self.compute_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"


def decode_step(cfg: ModelConfig | str, position: int, batch: int = 1, *, bandwidth: float, peak_flops: float,
                weight_bytes_per_param: float = 2.0, kv_bytes_per_element: int = 2) -> DecodeStep:
    """The roofline of one decoding step (see the section comment).

    Bytes: the activated weights minus the routed experts, plus, per MoE layer, the experts the batch
    touches (``experts_touched``), plus ``batch`` embedding rows; and ``batch · position`` tokens of KV
    cache (``kv_bytes_per_token``, chapter 08). FLOPs: per sequence 2 per activated parameter (the
    embedding lookup is free) plus ``decode_attention_flops``.
    """
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: got {batch!r}, need an int >= 1")
    bandwidth, peak_flops = _positive("bandwidth", bandwidth), _positive("peak_flops", peak_flops)
    c = count_params(cfg)
    routed = 0.0
    if cfg.is_moe:
        routed = cfg.n_moe_layers * experts_touched(cfg.n_routed_experts, cfg.top_k, batch) \
            * swiglu_params(cfg.d_model, cfg.expert_hidden)
    params_read = c.activated - c.routed_experts_active + routed + (batch - 1) * cfg.d_model
    weights = params_read * _positive("weight_bytes_per_param", weight_bytes_per_param)
    kv = float(batch * position * kv_bytes_per_token(cfg, kv_bytes_per_element))
    flops = batch * (2.0 * (c.activated - cfg.d_model) + decode_attention_flops(cfg, position))
    return DecodeStep(batch, position, weights, kv, flops, (weights + kv) / bandwidth, flops / peak_flops)


@dataclass(frozen=True)
class AnswerTime:
    """Generating ``tokens`` tokens for each of ``batch`` sequences, step by step on the roofline."""

    batch: int
    tokens: int
    seconds: float  # wall time of all the steps (the batch's sequences advance together)
    memory_bound_steps: float  # fraction of the steps where bytes, not FLOPs, set the time
    bytes: float
    flops: float

    @property
    def seconds_per_token(self) -> float:
        """Time per step, i.e. between two tokens of one sequence."""
        return self.seconds / self.tokens

    @property
    def gpu_seconds_per_answer(self) -> float:
        """The steps' time shared among the batch's sequences."""
        return self.seconds / self.batch

    def dollars_per_answer(self, price_per_gpu_hour: float) -> float:
        return self.gpu_seconds_per_answer / 3600 * _positive("price_per_gpu_hour", price_per_gpu_hour)


def answer_time(cfg: ModelConfig | str, tokens: int, prompt_tokens: int = 0, batch: int = 1, *, bandwidth: float,
                peak_flops: float, weight_bytes_per_param: float = 2.0, kv_bytes_per_element: int = 2) -> AnswerTime:
    """Sum ``decode_step`` over an answer of ``tokens`` tokens after ``prompt_tokens`` (the prompt's
    own pass is not counted). A model spread over several GPUs reads its weights in parallel on all of
    them: the GPU-seconds are the same, so this is the cost, not the latency, of such a deployment."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise ValueError(f"tokens: got {tokens!r}, need an int >= 1")
    if not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool) or prompt_tokens < 0:
        raise ValueError(f"prompt_tokens: got {prompt_tokens!r}, need an int >= 0")
    steps = [decode_step(cfg, prompt_tokens + i, batch, bandwidth=bandwidth, peak_flops=peak_flops,
                         weight_bytes_per_param=weight_bytes_per_param, kv_bytes_per_element=kv_bytes_per_element)
             for i in range(tokens)]
    return AnswerTime(batch, tokens, sum(s.seconds for s in steps),
                      sum(s.bound == "memory" for s in steps) / tokens,
                      sum(s.weight_bytes + s.kv_bytes for s in steps), sum(s.flops for s in steps))


def measure_bandwidth(megabytes: float = 256, repeats: int = 5) -> float:
    """This machine's memory bandwidth, bytes/s: the best of ``repeats`` copies of a ``megabytes`` tensor
    (each copy reads and writes it, 2 · size bytes). Uses torch's current thread count.
    ``minimoe.roofline.measure_bandwidth`` on the CPU, in this module's units."""
    from minimoe.roofline import measure_bandwidth as measure

    return measure("cpu", nbytes=int(_positive("megabytes", megabytes) * 1e6), repeats=max(1, repeats))


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate, FLOP/s: the best of ``repeats`` (n x n) @ (n x n) products (2·n³ each).
    ``minimoe.roofline.measure_peak_flops`` on the CPU."""
    from minimoe.roofline import measure_peak_flops

    return measure_peak_flops("cpu", n=n, repeats=max(1, repeats))


# --- humane units ------------------------------------------------------------------------------


def human(x: float, unit: str = "") -> str:
    """1.23e12 -> '1.23T', or '1.23 TFLOP/s' with a unit; 4 significant digits."""
    sep = " " if unit else ""
    for factor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= factor:
            return f"{x / factor:.4g}{sep}{suffix}{unit}"
    return f"{x:.4g}{sep}{unit}"


def gpu_time(hours: float) -> str:
    """GPU-hours in the unit that reads best: seconds, minutes, hours, K or M hours."""
    if hours < 1 / 60:
        return f"{hours * 3600:.3g} GPU-seconds"
    if hours < 1:
        return f"{hours * 60:.3g} GPU-minutes"
    return f"{human(hours)} GPU-hours"


def dollars(x: float) -> str:
    if abs(x) >= 1e6:
        return f"${x / 1e6:,.3f}M"
    if abs(x) >= 1e3:
        return f"${x:,.0f}"
    if abs(x) >= 0.01 or x == 0:
        return f"${x:,.2f}"
    return f"${x:.2g}"


def format_params(cfg: ModelConfig | str) -> str:
    """A table of parameters by component, total and activated."""
    counts = count_params(cfg)
    rows = [(k.replace("_", " "), v) for k, v in counts.by_component().items() if v]
    rows += [("total", counts.total), ("activated per token", counts.activated)]
    if counts.mtp:
        rows.append(("total with MTP", counts.total_with_mtp))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {human(v):>8}  ({v:,})" for name, v in rows)


def format_cost(n_params: float, n_tokens: float, gpu_name: str = "h100", mfu: float = 0.4,
                price_per_gpu_hour: float = 2.0, n_gpus: int | None = None, fp8: bool = False) -> str:
    """What training ``n_params`` (activated) parameters on ``n_tokens`` tokens costs, in words."""
    g = gpu(gpu_name)
    peak = g.fp8_flops if fp8 else g.bf16_flops
    if peak is None:
        raise ValueError(f"fp8: the {g.name} has no fp8 tensor cores")
    flops = training_flops(n_params, n_tokens)
    cost = training_cost(flops, peak, mfu, price_per_gpu_hour)
    precision = "fp8" if fp8 else g.half
    lines = [
        f"model       {human(n_params)} parameters (activated per token), {human(n_tokens)} tokens "
        f"= {tokens_per_param(n_tokens, n_params):.4g} tokens per parameter (Chinchilla-optimal: about 20)",
        f"compute     6·N·D = {flops:.4g} FLOPs",
        f"oven        {g.name}: {human(peak, 'FLOP/s')} dense {precision} peak × {mfu:.0%} MFU "
        f"= {human(peak * mfu, 'FLOP/s')}",
        f"GPU time    {gpu_time(cost.gpu_hours)}",
        f"cost        {dollars(cost.dollars)} at {dollars(price_per_gpu_hour)} per GPU-hour",
    ]
    if n_gpus:
        lines.append(f"wall clock  {cost.wall_days(n_gpus):.4g} days on {n_gpus:,} GPUs")
    return "\n".join(lines)


def format_deepseek_v3() -> str:
    """DeepSeek-V3's bill reproduced from its report, and what 6·N·D says about it."""
    bill = deepseek_v3_bill()
    counts = count_params("deepseek-v3")
    hours = DEEPSEEK_V3["gpu_hours"]
    lines = ["DeepSeek-V3 training bill (arXiv 2412.19437, Table 1; H800 GPU-hours)"]
    lines += [f"  {stage:<18} {human(h):>7}" for stage, h in hours.items()]
    lines += [
        f"  {'total':<18} {human(bill['total_gpu_hours']):>7}  -> {dollars(bill['dollars'])} at $2/GPU-hour",
        f"  check: 180K GPU-hours per trillion tokens × 14.8T = {human(bill['pretraining_hours_from_rate'])}",
        f"  {bill['wall_days_on_2048']:.4g} days on 2,048 H800s",
        "",
        f"parameters counted from the architecture: {human(counts.total)} total "
        f"(reported 671B), {human(counts.activated)} activated per token (reported 37B)",
        f"tokens per parameter: {tokens_per_param(DEEPSEEK_V3['tokens'], counts.activated):.4g} per activated, "
        f"{tokens_per_param(DEEPSEEK_V3['tokens'], counts.total):.4g} per total (Chinchilla: about 20)",
        f"pre-training compute, 6·N_activated·D: {bill['pretraining_flops_6ND']:.4g} FLOPs",
        f"implied MFU over 2,664K GPU-hours: {bill['mfu_vs_bf16_peak']:.1%} of the H800's bf16 peak, "
        f"{bill['mfu_vs_fp8_peak']:.1%} of its fp8 peak",
        "",
        "what the $5.576M leaves out:",
    ]
    lines += [f"  - {item}" for item in DEEPSEEK_V3["left_out"]]
    return "\n".join(lines)
