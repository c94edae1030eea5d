"""For each chapter, the exercise functions written as thin wrappers around the answer key.

Each wrapper calls the function that computes the answer (the package's reference, or torch's own
softmax in chapter 00) and earns full marks when nothing guards those functions. The tests check
that the guard turns each of them into a failed check, in the notebook's ``check()`` and in
``minimoe grade``. Exercises with no reference to wrap (``NO_REFERENCE``) are
left out.
"""

WRAPPERS = {
    "00": '''
import torch
def count_linear_params(in_features, out_features, bias=True):
    return sum(p.numel() for p in torch.nn.Linear(in_features, out_features, bias=bias).parameters())
def stable_softmax(x, dim=-1):
    return torch.softmax(x, dim=dim)
''',
    "01": '''
from minimoe import recipe
from minimoe.config import ModelConfig
def _attention(d_model, n_heads, n_kv_heads):
    return recipe.attention_params(ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=1,
                                               attention="mha" if n_kv_heads == n_heads else "gqa", n_kv_heads=n_kv_heads))
def count_block_params(d_model, n_heads, n_kv_heads, ffn_hidden):
    return _attention(d_model, n_heads, n_kv_heads) + recipe.swiglu_params(d_model, ffn_hidden) + 2 * d_model
def training_cost(n_params, n_tokens, peak_flops, mfu, price_per_gpu_hour):
    c = recipe.training_cost(recipe.training_flops(n_params, n_tokens), peak_flops, mfu, price_per_gpu_hour)
    return c.flops, c.gpu_hours, c.dollars
def implied_mfu(n_params, n_tokens, gpu_hours, peak_flops):
    return recipe.implied_mfu(6 * n_params * n_tokens, gpu_hours, peak_flops)
def moe_block_params(d_model, n_heads, n_experts, n_shared, top_k, expert_hidden):
    common = _attention(d_model, n_heads, n_heads) + 2 * d_model + d_model * n_experts
    expert = recipe.swiglu_params(d_model, expert_hidden)
    return common + (n_experts + n_shared) * expert, common + (top_k + n_shared) * expert
''',
    "02": '''
from minimoe.data.arithmetic import add_cot_completion
from minimoe.data.mixture import split_index
def add_cot(a, b):
    return add_cot_completion(a, b)
def split_by_problem(problems, fractions, seed):
    return [split_index(p, seed, fractions) for p in problems]
''',
    "03": '''
import torch
from minimoe.config import ModelConfig
from minimoe.model.attention import Attention
from minimoe.model.layers import rope_angles
def multi_head_attention(x, wq, wk, wv, wo, n_heads, n_kv_heads, positions):
    cfg = ModelConfig(name="key", vocab_size=10, d_model=x.shape[1], n_layers=1, n_heads=n_heads,
                      attention="mha" if n_kv_heads == n_heads else "gqa", n_kv_heads=n_kv_heads,
                      ffn_hidden=8, max_seq_len=4096)
    layer = Attention(cfg)
    with torch.no_grad():
        for p, w in zip((layer.wq.weight, layer.wk.weight, layer.wv.weight, layer.wo.weight), (wq, wk, wv, wo)):
            p.copy_(w)
        cos, sin = rope_angles(positions, wq.shape[0] // n_heads, cfg.rope_theta)
        return layer(x[None], cos, sin)[0]
''',
    "04": '''
import torch
from minimoe.config import ModelConfig
from minimoe.moe.layer import MoELayer
def moe_forward(x, weights, k, token_mask=None):
    e, d, h = weights["experts.w_gate.weight"].shape
    shared = weights["shared.w_gate.weight"].shape[0] // h if "shared.w_gate.weight" in weights else 0
    cfg = ModelConfig(name="key", vocab_size=10, d_model=d, n_layers=1, n_heads=1, max_seq_len=64,
                      n_routed_experts=e, n_shared_experts=shared, top_k=k, expert_hidden=h)
    layer = MoELayer(cfg, backend="loop")
    layer.load_state_dict(weights)
    with torch.no_grad():
        return layer(x[None], token_mask=None if token_mask is None else token_mask[None], stats=False)[0][0]
''',
    "05": '''
from minimoe.moe.balance import sequence_balance_loss
from minimoe.moe.capacity import capacity_keep, expert_capacity
def capacity_keep_mask(topk_idx, n_experts, capacity_factor, token_mask=None):
    n_real = topk_idx.shape[0] if token_mask is None else int(token_mask.sum())
    cap = expert_capacity(n_real, n_experts, topk_idx.shape[1], capacity_factor)
    return capacity_keep(topk_idx, n_experts, cap, token_mask), cap
def seq_balance_loss(scores, topk_idx, n_sequences, token_mask=None):
    return sequence_balance_loss(scores, topk_idx, n_sequences, token_mask)
''',
    "06": '''
from minimoe.dispatch.sort import combine, route
def permutation_and_offsets(topk_idx, n_experts):
    order, _, offsets = route(topk_idx, n_experts)
    return order, offsets
def combine_rows(y, order, weights, n_tokens):
    return combine(y, order, weights, n_tokens)
''',
    "07": '''
import torch
from minimoe.profiler.estimate import estimate_memory
def training_bytes(config, nbytes):
    est = estimate_memory(config, 1, 1, dtype={4: torch.float32, 2: torch.bfloat16}[nbytes])
    return {"parameters": est.parameters, "gradients": est.gradients, "adam": est.optimizer}
def activation_bytes(config, batch, seq_len, checkpointing):
    return estimate_memory(config, batch, seq_len, checkpointing=checkpointing).activations
def bytes_per_gpu(dense, expert, world, zero, ep):
    from minimoe.profiler.sharding import MIXED, state_per_gpu
    return dict(zip(("weights", "gradients", "optimizer"), state_per_gpu(dense, expert // ep, world, zero, ep, MIXED)))
''',
    "08": '''
import types
import torch
from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.model.cache import KVCache
from minimoe.model.latent import LatentAttention
def kv_bytes_per_token(config, bytes_per_element):
    return recipe.kv_bytes_per_token(ModelConfig(**config), bytes_per_element)
def expand_latent(c_kv, w_ukv, n_heads, d_nope, d_v):
    layer = types.SimpleNamespace(wkv_b=types.SimpleNamespace(weight=w_ukv), n_heads=n_heads, d_nope=d_nope,
                                  d_v=d_v, d_c=c_kv.shape[1])
    w_uk, w_uv = LatentAttention.up_projections(layer)
    return torch.einsum("tc,hnc->htn", c_kv, w_uk), torch.einsum("tc,hvc->htv", c_kv, w_uv)
def cache_update(cache, new, length):
    kv = KVCache.__new__(KVCache)
    kv.k, kv.v, kv.max_len, kv.length = [cache.clone()], [cache.clone()], cache.shape[2], length
    kv.update(0, new, new)
    return kv.k[0], length + new.shape[2]
''',
    "09": '''
from minimoe.dispatch import expert_ffn
from minimoe.parallel import exchange_plan
def send_counts(topk_idx, n_experts, world):
    return exchange_plan(topk_idx, n_experts, world)[2].tolist()
def local_dispatch(x, ids, w, w_gate, w_up, w_down):
    valid = ids >= 0
    return expert_ffn(x, ids.clamp(min=0), w * valid, w_gate, w_up, w_down)
from minimoe.parallel import all_to_all as _all_to_all
def all_to_all(x, recv_splits, send_splits):
    return _all_to_all(x, recv_splits, send_splits)
''',
    "10": '''
from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.generate import generate
from minimoe.model import build_model
def greedy_decode(config, weights, prompt, n_new):
    model = build_model(ModelConfig(**config))
    model.load_state_dict(weights)
    return generate(model, prompt, n_new, temperature=0)[0].tolist(), len(prompt) + n_new - 1
from minimoe.generate import vote_accuracy as _vote_accuracy
def vote_accuracy(answers, truths, n):
    return _vote_accuracy(answers, truths, n)
''',
}

# Exercises whose answer no package function computes: the student runs something and reads it
# (sweeps, ablations, predictions), writes a Triton kernel, or writes a computation the package
# does only inside a layer (absorbed decoding of one head, byte-pair merges).
NO_REFERENCE = {"02.bpe", "03.lr_sweep", "03.predict", "04.ablation", "04.predict", "05.gamma_sweep", "05.predict",
                "06.tile_kernel", "06.weight_grad_kernel", "07.activation_peak", "08.absorbed_decode",
                "10.roofline"}  # step_seconds: the package's decode_step takes a model config, not these numbers
