"""For each chapter, the exercise functions written as thin wrappers around the answer key.

Each wrapper calls the function that computes the answer (the package's reference, or torch's own
softmax in chapter 00) and earns full marks when nothing guards those functions. The tests check
that the guard turns each of them into a failed check, in the notebook's ``check()`` and in
``minimoe grade``. Exercises with no reference to wrap (03.train_step, 07.activation_peak) are left
out.
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
def count_block_params(d_model, n_heads, n_kv_heads, ffn_hidden):
    cfg = ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=1, ffn_hidden=ffn_hidden,
                      attention="mha" if n_kv_heads == n_heads else "gqa", n_kv_heads=n_kv_heads)
    return recipe.attention_params(cfg) + recipe.swiglu_params(d_model, ffn_hidden) + 2 * d_model
def training_cost(n_params, n_tokens, peak_flops, mfu, price_per_gpu_hour):
    c = recipe.training_cost(recipe.training_flops(n_params, n_tokens), peak_flops, mfu, price_per_gpu_hour)
    return c.flops, c.gpu_hours, c.dollars
def implied_mfu(n_params, n_tokens, gpu_hours, peak_flops):
    return recipe.implied_mfu(6 * n_params * n_tokens, gpu_hours, peak_flops)
''',
    "02": '''
from minimoe.data.arithmetic import add_cot_completion
from minimoe.data.mixture import split_index
from minimoe.data.tokenizer import SPECIAL_GLYPHS, CharTokenizer
def encode(text, vocab):
    return CharTokenizer(vocab[len(SPECIAL_GLYPHS):]).encode(text)
def decode(ids, vocab):
    return CharTokenizer(vocab[len(SPECIAL_GLYPHS):]).decode(ids)
def add_cot(a, b):
    return add_cot_completion(a, b)
def split_by_problem(problems, fractions, seed):
    return [split_index(p, seed, fractions) for p in problems]
''',
    "03": '''
from minimoe.model import attention as _attention, layers as _layers
def causal_mask(q_len, k_len):
    return _attention.causal_mask(q_len, k_len)
def apply_rope(x, positions, theta=10000.0):
    cos, sin = _layers.rope_angles(positions, x.shape[-1], theta)
    return _layers.apply_rope(x, cos, sin)
''',
    "04": '''
from minimoe.moe import sigmoid_router, softmax_router
def topk_router(logits, k, renormalize=False):
    return softmax_router(logits, k, renormalize=renormalize)
def v3_gate(logits, bias, k, scaling=1.0):
    return sigmoid_router(logits, k, bias=bias, scaling=scaling)
''',
    "05": '''
from minimoe.moe import bias_update, switch_aux_loss
def aux_loss(probs, topk_idx):
    return switch_aux_loss(probs, topk_idx)
def update_bias(bias, counts, gamma):
    return bias_update(bias, counts, gamma)
''',
    "06": '''
from minimoe.dispatch.sort import combine, permute, route
def permutation_and_offsets(topk_idx, n_experts):
    order, _, offsets = route(topk_idx, n_experts)
    return order, offsets
def combine_rows(y, order, weights, n_tokens):
    return combine(y, order, weights, n_tokens)
def gather_rows(x, index):
    return permute(x, index, 1)
''',
    "07": '''
import torch
from minimoe.profiler.estimate import estimate_memory
def training_bytes(config, nbytes):
    est = estimate_memory(config, 1, 1, dtype={4: torch.float32, 2: torch.bfloat16}[nbytes])
    return {"parameters": est.parameters, "gradients": est.gradients, "adam": est.optimizer}
def activation_bytes(config, batch, seq_len, checkpointing):
    return estimate_memory(config, batch, seq_len, checkpointing=checkpointing).activations
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
def answer_cost(n_active, n_tokens, peak_flops, mfu, price_per_gpu_hour):
    c = recipe.answer_cost(n_active, n_tokens, peak_flops, mfu, price_per_gpu_hour)
    return c.flops, c.dollars
''',
}

NO_REFERENCE = {"03.train_step", "07.activation_peak"}
