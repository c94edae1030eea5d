"""Chapters 08 and 09's checks: right answers pass, common mistakes lose their own checks only."""

import torch
import torch.distributed as dist

from minimoe.grading import get_exercise, run_checks
from minimoe.grading.student import LocalStudent
from minimoe.parallel import all_to_all


def _score(exercise_id, seed=0, **functions):
    return {o.name: o.passed for o in run_checks(get_exercise(exercise_id), LocalStudent(functions), seed=seed)}


# --- 09.all_to_all --------------------------------------------------------------------------------

def _forward_only(x, recv_splits, send_splits):  # right rows, but autograd cannot see through it
    out = x.new_empty(sum(recv_splits), *x.shape[1:])
    dist.all_to_all_single(out, x.contiguous(), list(recv_splits), list(send_splits))
    return out


class _SameSplitsBack(torch.autograd.Function):
    """The backward sends the gradient with the forward's splits instead of swapping them."""

    @staticmethod
    def forward(ctx, x, recv_splits, send_splits):
        ctx.splits = (list(recv_splits), list(send_splits))
        return _forward_only(x, recv_splits, send_splits)

    @staticmethod
    def backward(ctx, grad):
        recv_splits, send_splits = ctx.splits
        out = grad.new_empty(sum(recv_splits), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), list(recv_splits), list(send_splits))
        return out, None, None


def _same_splits_back(x, recv_splits, send_splits):
    return _SameSplitsBack.apply(x, recv_splits, send_splits)


def _flat_rows(x, recv_splits, send_splits):  # sizes the output as if rows were 1-D numbers
    return all_to_all(x.reshape(x.shape[0], -1), recv_splits, send_splits).reshape(-1, x.shape[-1])


def test_all_to_all_checks_pass_the_package_and_fail_common_mistakes():
    right = _score("09.all_to_all", all_to_all=all_to_all)
    assert all(right.values()), right
    forward_only = _score("09.all_to_all", all_to_all=_forward_only)
    assert forward_only["forward: each rank receives the rows sent to it, in rank order"]
    assert not forward_only["backward: each row's gradient goes back to the rank it came from"]
    same = _score("09.all_to_all", all_to_all=_same_splits_back)
    assert same["forward: each rank receives the rows sent to it, in rank order"]
    assert not same["backward: each row's gradient goes back to the rank it came from"]
    flat = _score("09.all_to_all", all_to_all=_flat_rows)
    assert not flat["three ranks, a rank with nothing to send, rows of more than one dimension"]
