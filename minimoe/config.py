"""The model's shape: one frozen dataclass, and presets by name.

``ModelConfig`` says everything that decides a model's parameter count: the vocabulary, the
width and depth, the attention type (multi-head, grouped-query or DeepSeek's multi-head latent
attention), the dense feed-forward, and the mixture of experts (routed and shared experts, top-k,
how many leading layers stay dense). ``minimoe.recipe`` counts from it with plain arithmetic,
and the model of chapter 03 is built from it, following these conventions:

- linear layers have no bias; RMSNorm has one weight vector;
- a feed-forward (dense or expert) is SwiGLU: three matrices, ``d_model x hidden`` each;
- each block has two RMSNorms (before attention, before the feed-forward); one more at the end;
- MLA adds an RMSNorm on each compressed latent (``q_lora_rank`` and ``kv_lora_rank`` wide);
- the router is one ``d_model x n_routed_experts`` matrix (DeepSeek-V3's balancing bias is a
  buffer updated outside autograd, not a parameter);
- a multi-token-prediction (MTP) module, as in DeepSeek-V3, is one more block plus a projection
  of ``2·d_model -> d_model`` and two RMSNorms, sharing the embedding and the output head.

This module needs no torch: learners can count models they could never build.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

ATTENTION_KINDS = ("mha", "gqa", "mla")
ROUTERS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    vocab_size: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 0  # 0: d_model // n_heads
    attention: str = "mha"  # "mha", "gqa" or "mla"
    n_kv_heads: int = 0  # GQA: heads sharing keys and values (0: n_heads)
    # Multi-head latent attention (DeepSeek-V2/V3); only used when attention == "mla".
    q_lora_rank: int = 0  # d_c': query compression (0: no compression)
    kv_lora_rank: int = 0  # d_c: the compressed KV latent that the cache holds
    qk_rope_head_dim: int = 0  # d_h^R: the decoupled RoPE key/query size
    qk_nope_head_dim: int = 0  # the part of each head's query/key without RoPE
    v_head_dim: int = 0
    # Feed-forward.
    ffn_hidden: int = 0  # dense SwiGLU hidden size (0: 8/3 · d_model rounded up to a multiple of 8)
    # Mixture of experts (n_routed_experts == 0: every layer is dense).
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    top_k: int = 0
    expert_hidden: int = 0
    n_dense_layers: int = 0  # the first layers keep a dense feed-forward
    # Routing and load balancing (chapters 04 and 05, minimoe.moe); none of these changes a count.
    router: str = "softmax"  # "softmax" (Switch, GShard, Mixtral, DeepSeekMoE) or "sigmoid" (DeepSeek-V3)
    router_renormalize: bool = True  # rescale the k chosen gate weights to sum to 1 (Mixtral, GShard, V3)
    routed_scaling: float = 1.0  # gate weights times this (DeepSeek-V3: 2.5)
    n_expert_groups: int = 0  # group-limited routing: experts in this many groups (0: off) ...
    topk_groups: int = 0  # ... and each token chooses its experts from its best topk_groups groups
    aux_loss_coef: float = 0.0  # Switch/GShard load-balancing loss E·Σ f_i·P_i, times this
    z_loss_coef: float = 0.0  # router z-loss mean(logsumexp(logits)²) (ST-MoE), times this
    seq_aux_coef: float = 0.0  # DeepSeek-V3's sequence-wise balance loss, times this (V3: 1e-4)
    bias_update_rate: float = 0.0  # DeepSeek-V3's aux-loss-free bias step γ (0: no bias; V3: 1e-3)
    capacity_factor: float = 0.0  # expert capacity = factor · tokens·k / experts; 0: dropless
    tie_embeddings: bool = False
    mtp_depth: int = 0  # multi-token-prediction modules
    max_seq_len: int = 256
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, what: str) -> None:
            if not cond:
                raise ValueError(f"{field}: got {getattr(self, field)!r}, need {what}")

        for f in fields(self):
            value = getattr(self, f.name)
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "bool": isinstance(value, bool),
                "str": isinstance(value, str),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            }[f.type]
            if not ok:
                raise TypeError(f"{f.name}: got {type(value).__name__} {value!r}, need {f.type}")
        for positive in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            need(getattr(self, positive) >= 1, positive, "an int >= 1")
        for non_negative in ("head_dim", "n_kv_heads", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
                             "qk_nope_head_dim", "v_head_dim", "ffn_hidden", "n_routed_experts",
                             "n_shared_experts", "top_k", "expert_hidden", "n_dense_layers", "mtp_depth"):
            need(getattr(self, non_negative) >= 0, non_negative, "an int >= 0")
        need(self.attention in ATTENTION_KINDS, "attention", f"one of {ATTENTION_KINDS}")
        if self.head_dim == 0:
            need(self.d_model % self.n_heads == 0, "n_heads", f"a divisor of d_model={self.d_model}")
        if self.attention == "gqa":
            need(self.kv_heads >= 1 and self.n_heads % self.kv_heads == 0, "n_kv_heads",
                 f"a divisor of n_heads={self.n_heads}")
        if self.attention == "mla":
            need(self.kv_lora_rank >= 1, "kv_lora_rank", "an int >= 1 for MLA")
            need(self.qk_nope_head_dim + self.qk_rope_head_dim >= 1, "qk_nope_head_dim",
                 "qk_nope_head_dim + qk_rope_head_dim >= 1 for MLA")
            need(self.v_head_dim >= 1, "v_head_dim", "an int >= 1 for MLA")
        need(self.router in ROUTERS, "router", f"one of {ROUTERS}")
        need(self.routed_scaling > 0, "routed_scaling", "a number > 0")
        for coef in ("aux_loss_coef", "z_loss_coef", "seq_aux_coef", "bias_update_rate", "capacity_factor"):
            need(self.__dict__[coef] >= 0, coef, "a number >= 0")
        need(self.n_expert_groups >= 0 and self.topk_groups >= 0, "n_expert_groups",
             "n_expert_groups and topk_groups >= 0")
        if self.n_expert_groups:
            need(self.n_routed_experts % self.n_expert_groups == 0, "n_expert_groups",
                 f"a divisor of n_routed_experts={self.n_routed_experts}")
            need(1 <= self.topk_groups <= self.n_expert_groups, "topk_groups",
                 f"1..n_expert_groups={self.n_expert_groups}")
            need(self.top_k <= self.topk_groups * (self.n_routed_experts // self.n_expert_groups), "top_k",
                 "at most topk_groups · experts per group, so that the chosen groups hold k experts")
        else:
            need(self.topk_groups == 0, "topk_groups", "0 when n_expert_groups is 0")
        if self.n_routed_experts:
            need(1 <= self.top_k <= self.n_routed_experts, "top_k", f"1..n_routed_experts={self.n_routed_experts}")
            need(self.expert_hidden >= 1, "expert_hidden", "an int >= 1 when there are experts")
            need(self.n_dense_layers <= self.n_layers, "n_dense_layers", f"at most n_layers={self.n_layers}")
        else:
            need(self.n_shared_experts == 0 and self.top_k == 0, "n_routed_experts",
                 ">= 1 when n_shared_experts or top_k is set")

    # --- derived sizes ---------------------------------------------------------------------------

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        if self.attention == "mha":
            return self.n_heads
        return self.n_kv_heads or self.n_heads

    @property
    def dense_hidden(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return -(-8 * self.d_model // 3 // 8) * 8  # 8/3 · d_model, rounded up to a multiple of 8

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers if self.is_moe else 0

    def with_(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # The course's own models: small enough to train on a laptop CPU; vocab_size is minimoe.data.TOKENIZER's.
    "tiny": ModelConfig(name="tiny", vocab_size=100, d_model=128, n_layers=4, n_heads=4, ffn_hidden=352,
                        max_seq_len=256),
    "tiny-moe": ModelConfig(name="tiny-moe", vocab_size=100, d_model=128, n_layers=4, n_heads=4, ffn_hidden=352,
                            # fine-grained as in DeepSeekMoE: the dense FFN's 352 split into experts of 88;
                            # 1 shared + top-3 routed = 352 activated, the dense model's width.
                            n_routed_experts=16, n_shared_experts=1, top_k=3, expert_hidden=88,
                            n_dense_layers=1, max_seq_len=256),
    # Chapter 05's balancing experiment: tiny-moe (no balancing) against the same experts with
    # the Switch aux loss (α = 0.01, Switch's value) and with DeepSeek-V3's sigmoid gate and
    # aux-loss-free bias (γ = 0.01: ten times V3's, for a run of hundreds of steps, not of 14.8T tokens).
    "tiny-moe-aux": ModelConfig(name="tiny-moe-aux", vocab_size=100, d_model=128, n_layers=4, n_heads=4,
                                ffn_hidden=352, n_routed_experts=16, n_shared_experts=1, top_k=3, expert_hidden=88,
                                n_dense_layers=1, max_seq_len=256, aux_loss_coef=0.01),
    "tiny-moe-v3": ModelConfig(name="tiny-moe-v3", vocab_size=100, d_model=128, n_layers=4, n_heads=4,
                               ffn_hidden=352, n_routed_experts=16, n_shared_experts=1, top_k=3, expert_hidden=88,
                               n_dense_layers=1, max_seq_len=256, router="sigmoid", bias_update_rate=0.01),
    # The smallest: chapter 10's identity experiment needs a model that learns a habit, not arithmetic.
    "micro": ModelConfig(name="micro", vocab_size=100, d_model=64, n_layers=2, n_heads=2, ffn_hidden=176,
                         max_seq_len=128),
    "small": ModelConfig(name="small", vocab_size=100, d_model=256, n_layers=6, n_heads=8, ffn_hidden=688,
                         max_seq_len=512),
    # DeepSeek-V3 (arXiv 2412.19437, §2 and §4.2): 61 layers, d_model 7168, 128 heads of 128,
    # MLA with d_c = 512, d_c' = 1536, d_h^R = 64; the first 3 layers dense (hidden 18432);
    # then 1 shared + 256 routed experts of hidden 2048, top-8; vocabulary 129K; one MTP module.
    "deepseek-v3": ModelConfig(name="deepseek-v3", vocab_size=129280, d_model=7168, n_layers=61, n_heads=128,
                               head_dim=128, attention="mla", q_lora_rank=1536, kv_lora_rank=512,
                               qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, ffn_hidden=18432,
                               n_routed_experts=256, n_shared_experts=1, top_k=8, expert_hidden=2048,
                               n_dense_layers=3, mtp_depth=1, max_seq_len=4096),
}


def preset(name: str) -> ModelConfig:
    """The named preset (``tiny``, ``tiny-moe``, ``small``, ``deepseek-v3``)."""
    if name not in PRESETS:
        raise ValueError(f"preset: got {name!r}, need one of {', '.join(PRESETS)}")
    return PRESETS[name]
