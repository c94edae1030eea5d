"""Chapters 08 and 09's checks: right answers pass, common mistakes lose their own checks only."""

import torch
import torch.distributed as dist

from minimoe.grading import get_exercise, run_checks
from minimoe.grading.student import LocalStudent


def _score(exercise_id, seed=0, **functions):
    return {o.name: o.passed for o in run_checks(get_exercise(exercise_id), LocalStudent(functions), seed=seed)}


# --- 09.all_to_all --------------------------------------------------------------------------------

def _forward_only(x, recv_splits, send_splits):  # right rows, but autograd cannot see through it
    out = x.new_empty(sum(recv_splits), *x.shape[1:])
    dist.all_to_all_single(out, x.contiguous(), list(recv_splits), list(send_splits))
    return out


class _Exchange(torch.autograd.Function):
    """The exchange with autograd; ``swap=False`` is the mistake of sending the gradient back with the
    forward's splits instead of swapping them. (A right answer written here: the package's
    ``all_to_all`` is guarded while the checks run.)"""

    @staticmethod
    def forward(ctx, x, recv_splits, send_splits, swap):
        ctx.splits, ctx.swap = (list(recv_splits), list(send_splits)), swap
        return _forward_only(x, recv_splits, send_splits)

    @staticmethod
    def backward(ctx, grad):
        recv_splits, send_splits = ctx.splits
        back = (send_splits, recv_splits) if ctx.swap else (recv_splits, send_splits)
        return _forward_only(grad, *back), None, None, None


def _same_splits_back(x, recv_splits, send_splits):
    return _Exchange.apply(x, recv_splits, send_splits, False)


def all_to_all(x, recv_splits, send_splits):
    return _Exchange.apply(x, recv_splits, send_splits, True)


def _flat_rows(x, recv_splits, send_splits):  # sizes the output as if rows were 1-D numbers
    return all_to_all(x.reshape(x.shape[0], -1), recv_splits, send_splits).reshape(-1, x.shape[-1])


def test_all_to_all_checks_pass_the_package_and_fail_common_mistakes():
    right = _score("09.all_to_all", all_to_all=all_to_all)
    assert all(right.values()), right
    from minimoe.parallel import all_to_all as package_all_to_all  # the guard turns it away
    assert not any(_score("09.all_to_all", all_to_all=package_all_to_all).values())
    forward_only = _score("09.all_to_all", all_to_all=_forward_only)
    assert forward_only["forward: each rank receives the rows sent to it, in rank order"]
    assert not forward_only["backward: each row's gradient goes back to the rank it came from"]
    same = _score("09.all_to_all", all_to_all=_same_splits_back)
    assert same["forward: each rank receives the rows sent to it, in rank order"]
    assert not same["backward: each row's gradient goes back to the rank it came from"]
    flat = _score("09.all_to_all", all_to_all=_flat_rows)
    assert not flat["three ranks, a rank with nothing to send, rows of more than one dimension"]


# --- 08.kv_bytes and 08.absorbed_decode --------------------------------------------------------------

def _kv_bytes(config, bytes_per_element, head_dim=None):
    if config["attention"] == "mla":
        per_layer = config["kv_lora_rank"] + config["qk_rope_head_dim"]
    else:
        heads = config["n_kv_heads"] if config["attention"] == "gqa" else config["n_heads"]
        per_layer = 2 * heads * (head_dim(config) if head_dim else config["head_dim"])
    return config["n_layers"] * per_layer * bytes_per_element


def test_kv_bytes_needs_the_configs_head_dim():
    assert all(_score("08.kv_bytes", kv_bytes_per_token=_kv_bytes).values())
    from_width = _score("08.kv_bytes", kv_bytes_per_token=lambda c, b: _kv_bytes(
        c, b, head_dim=lambda cfg: cfg["d_model"] // cfg["n_heads"]))
    assert not from_width["multi-head attention"] and not from_width["grouped-query attention"]
    assert from_width["multi-head latent attention"]


def _absorbed(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, scale_width=None, stable=True):
    width = q_nope.shape[0] + q_rope.shape[0] if scale_width is None else scale_width(c_kv, q_rope)
    q_lat = w_uk.T @ q_nope
    scores = (c_kv @ q_lat + k_rope @ q_rope) / width ** 0.5
    p = torch.softmax(scores, 0) if stable else scores.exp() / scores.exp().sum()
    out_lat = p @ c_kv
    return w_uv @ out_lat, q_lat, out_lat


def test_absorbed_decode_checks_catch_the_usual_mistakes():
    for seed in (0, 1):
        assert all(_score("08.absorbed_decode", seed, absorbed_decode=_absorbed).values())
    # scaled by the absorbed width (d_c + d_rope) instead of the original query's
    wide = _score("08.absorbed_decode", absorbed_decode=lambda *a: _absorbed(
        *a, scale_width=lambda c_kv, q_rope: c_kv.shape[1] + q_rope.shape[0]))
    assert not wide["the output equals the naive form's"]
    assert not wide["the query moved into the latent space, the output read from the latents"]
    unstable = _score("08.absorbed_decode", absorbed_decode=lambda *a: _absorbed(*a, stable=False))
    assert unstable["the output equals the naive form's"]
    assert not unstable["one cached token, and scores too large for a plain exp"]
    only_y = _score("08.absorbed_decode", absorbed_decode=lambda *a: (_absorbed(*a)[0], None, None))
    assert only_y["the output equals the naive form's"]
    assert not only_y["the query moved into the latent space, the output read from the latents"]
