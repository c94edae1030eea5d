"""Chapter 00's warm-up exercises: count a Linear layer's parameters; a numerically stable softmax."""

from __future__ import annotations

import torch

from minimoe.grading.registry import Student, exercise, expect_close, expect_equal

linear = exercise(
    "00.linear_params",
    "count the parameters of a Linear layer",
    functions=("count_linear_params",),
    protects=("torch.nn.modules.linear.Linear.__init__",),
)


def _sizes(rng: torch.Generator, n: int = 5) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in torch.randint(1, 4097, (2,), generator=rng)) for _ in range(n)]


@linear.check("with a bias", points=1,
              hint="a Linear layer holds a weight matrix of out_features x in_features, plus one bias per output")
def _linear_bias(student: Student, rng: torch.Generator) -> None:
    for d_in, d_out in _sizes(rng) + [(1, 1)]:
        want = sum(p.numel() for p in torch.nn.Linear(d_in, d_out, bias=True, device="meta").parameters())
        expect_equal(student.call("count_linear_params", d_in, d_out, bias=True), want,
                     f"count_linear_params({d_in}, {d_out}, bias=True)")


@linear.check("without a bias", points=1, hint="with bias=False only the weight matrix remains")
def _linear_no_bias(student: Student, rng: torch.Generator) -> None:
    for d_in, d_out in _sizes(rng) + [(7, 1)]:
        want = d_in * d_out
        expect_equal(student.call("count_linear_params", d_in, d_out, bias=False), want,
                     f"count_linear_params({d_in}, {d_out}, bias=False)")


softmax = exercise(
    "00.softmax",
    "a numerically stable softmax",
    functions=("stable_softmax",),
    protects=("torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax", "torch.special.softmax",
              "torch.log_softmax", "torch.Tensor.log_softmax", "torch.nn.functional.log_softmax"),
)


@softmax.check("matches torch.softmax on the last dimension", points=1,
               hint="exponentiate, then divide by the sum along `dim` (keep the dimension for broadcasting)")
def _softmax_last(student: Student, rng: torch.Generator) -> None:
    for shape in [(5,), (3, 7), (2, 3, 11), (1, 1)]:
        x = torch.randn(shape, generator=rng) * 3
        expect_close(student.call("stable_softmax", x, dim=-1), torch.softmax(x, dim=-1),
                     f"stable_softmax(x of shape {shape}, dim=-1)")


@softmax.check("works along any dimension", points=1,
               hint="use the `dim` argument for the max, the sum and keepdim, not a fixed axis")
def _softmax_dim(student: Student, rng: torch.Generator) -> None:
    x = torch.randn(4, 6, 5, generator=rng)
    for dim in (0, 1, -2):
        expect_close(student.call("stable_softmax", x, dim=dim), torch.softmax(x, dim=dim),
                     f"stable_softmax(x of shape (4, 6, 5), dim={dim})")


@softmax.check("large logits stay finite", points=2,
               hint="exp(1000) overflows to inf; subtracting each row's maximum first changes nothing mathematically")
def _softmax_large(student: Student, rng: torch.Generator) -> None:
    x = torch.randn(3, 8, generator=rng) * 10 + 1000.0
    x[1] = -x[1]  # very negative logits underflow instead
    expect_close(student.call("stable_softmax", x, dim=-1), torch.softmax(x, dim=-1),
                 "stable_softmax(logits near +-1000)")
