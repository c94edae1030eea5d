"""Chapter 05's exercises: the Switch auxiliary loss, and DeepSeek-V3's bias update."""

from __future__ import annotations

import torch

from minimoe.grading.registry import Student, exercise, expect_close
from minimoe.moe import bias_update, switch_aux_loss


def _scalar(got, what: str) -> torch.Tensor:
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        return torch.tensor(float(got))
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        raise AssertionError(f"{what}: expected a single number (a 0-d tensor), got "
                             f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    return got.reshape(()).float()


def _routing(rng: torch.Generator, n: int, e: int, k: int, skew: float = 0.0):
    logits = torch.randn(n, e, generator=rng)
    logits[:, 0] += skew
    probs = logits.softmax(-1)
    return probs, probs.topk(k, dim=-1).indices


aux = exercise("05.aux_loss", "the Switch load-balancing loss", functions=("aux_loss",),
    protects=("minimoe.moe.balance.switch_aux_loss",))


@aux.check("exactly 1 under uniform routing", points=1,
           hint="with every expert getting the same share of tokens and probability 1/E everywhere, E · Σ f·P = E · E · (1/E)(1/E)")
def _aux_uniform(student: Student, rng: torch.Generator) -> None:
    e = int(torch.randint(2, 9, (1,), generator=rng))
    n = 4 * e
    probs = torch.full((n, e), 1.0 / e)
    idx = (torch.arange(n) % e)[:, None]
    expect_close(_scalar(student.call("aux_loss", probs, idx), "aux_loss"), torch.tensor(1.0),
                 f"aux_loss with {e} experts used equally")


@aux.check("random and skewed routing, top-1", points=2,
           hint="f_i is the fraction of tokens sent to expert i (counted from idx), P_i the MEAN probability of expert i over tokens")
def _aux_top1(student: Student, rng: torch.Generator) -> None:
    for skew in (0.0, 3.0):
        probs, idx = _routing(rng, 40, 6, 1, skew)
        expect_close(_scalar(student.call("aux_loss", probs, idx), "aux_loss"), switch_aux_loss(probs, idx),
                     f"aux_loss (top-1, skew {skew})")


@aux.check("top-k counts every assignment", points=2,
           hint="with k experts per token there are N·k assignments: f_i = (assignments to i) / (N·k), so f still sums to 1")
def _aux_topk(student: Student, rng: torch.Generator) -> None:
    k = int(torch.randint(2, 4, (1,), generator=rng))
    probs, idx = _routing(rng, 30, 8, k, 1.0)
    expect_close(_scalar(student.call("aux_loss", probs, idx), "aux_loss"), switch_aux_loss(probs, idx),
                 f"aux_loss (top-{k})")


bias = exercise("05.bias_update", "DeepSeek-V3's aux-loss-free bias update", functions=("update_bias",),
    protects=("minimoe.moe.balance.bias_update",))


@bias.check("overloaded down, underloaded up", points=2,
            hint="compare each expert's count with the MEAN count: above it the bias goes down by gamma, below it up by gamma")
def _bias_sign(student: Student, rng: torch.Generator) -> None:
    counts = torch.randint(0, 50, (8,), generator=rng).float()
    b = torch.randn(8, generator=rng) * 0.01
    expect_close(student.call("update_bias", b, counts, 0.001), bias_update(b, counts, 0.001),
                 "update_bias(random bias, random counts, gamma=0.001)")


@bias.check("an expert exactly at the mean stays put", points=1,
            hint="sign(0) is 0: an expert whose load equals the mean load keeps its bias")
def _bias_zero(student: Student, rng: torch.Generator) -> None:
    counts = torch.tensor([5.0, 5.0, 5.0, 5.0])
    b = torch.randn(4, generator=rng)
    expect_close(student.call("update_bias", b, counts, 0.01), b, "update_bias with every expert at the mean")
    counts = torch.tensor([9.0, 3.0, 6.0])  # the mean is 6
    expect_close(student.call("update_bias", torch.zeros(3), counts, 0.5), torch.tensor([-0.5, 0.5, 0.0]),
                 "update_bias(zeros, counts [9, 3, 6], gamma=0.5)")


@bias.check("the step is gamma, whatever the size of the error", points=1,
            hint="the update uses only the SIGN of the load error, times gamma, not the error itself")
def _bias_gamma(student: Student, rng: torch.Generator) -> None:
    counts = torch.tensor([1000.0, 0.0, 0.0, 0.0, 1.0])
    gamma = float(torch.empty(()).uniform_(0.001, 0.1, generator=rng))
    expect_close(student.call("update_bias", torch.zeros(5), counts, gamma), bias_update(torch.zeros(5), counts, gamma),
                 f"update_bias(zeros, counts with one huge load, gamma={gamma:.3g})")
