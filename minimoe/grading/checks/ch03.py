"""Chapter 03's exercises: the causal mask, rotary embeddings, one training step."""

from __future__ import annotations

from dataclasses import asdict

import torch

from minimoe.config import ModelConfig
from minimoe.grading.registry import Student, exercise, expect_close, expect_tuple
from minimoe.model import apply_rope, build_model, causal_mask, rope_angles

mask = exercise("03.causal_mask", "the causal mask", functions=("causal_mask",),
    protects=("minimoe.model.attention.causal_mask",))


def _expect_mask(got, want: torch.Tensor, what: str) -> None:
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
        raise AssertionError(f"{what}: expected a bool tensor, got "
                             f"{got.dtype if isinstance(got, torch.Tensor) else type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
    if not torch.equal(got, want):
        wrong = (got != want).nonzero()[0].tolist()
        raise AssertionError(f"{what}: wrong at query {wrong[0]}, key {wrong[1]}")


@mask.check("a square mask", points=1,
            hint="query i may look at key j when j <= i: the lower triangle, diagonal included")
def _mask_square(student: Student, rng: torch.Generator) -> None:
    for t in [1, 2, int(torch.randint(3, 40, (1,), generator=rng))]:
        _expect_mask(student.call("causal_mask", t, t), causal_mask(t, t), f"causal_mask({t}, {t})")


@mask.check("new queries after cached keys", points=2,
            hint="with k_len > q_len the queries are the LAST q_len positions: query i sits at position i + (k_len - q_len)")
def _mask_offset(student: Student, rng: torch.Generator) -> None:
    k_len = int(torch.randint(5, 40, (1,), generator=rng))
    for q_len in [1, 2, k_len - 1]:
        _expect_mask(student.call("causal_mask", q_len, k_len), causal_mask(q_len, k_len),
                     f"causal_mask({q_len}, {k_len})")


rope = exercise("03.rope", "rotary position embedding", functions=("apply_rope",),
    protects=("minimoe.model.layers.apply_rope", "minimoe.model.layers.rope_angles"))


def _rope_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    cos, sin = rope_angles(positions, x.shape[-1], theta)
    return apply_rope(x, cos, sin)


@rope.check("rotates each pair by position x frequency", points=2,
            hint="pair i is (x[..., i], x[..., i + D/2]); its angle is position * theta ** (-2i / D)")
def _rope_basic(student: Student, rng: torch.Generator) -> None:
    x = torch.randn(2, 3, 7, 8, generator=rng)
    positions = torch.arange(7)
    expect_close(student.call("apply_rope", x, positions, 10000.0), _rope_reference(x, positions, 10000.0),
                 "apply_rope(x of shape (2, 3, 7, 8), positions 0..6)")


@rope.check("positions that do not start at 0, another theta", points=1,
            hint="use the positions you are given (a cache continues at its length), and the theta argument")
def _rope_offset(student: Student, rng: torch.Generator) -> None:
    x = torch.randn(1, 2, 5, 16, generator=rng)
    positions = torch.arange(11, 16)
    expect_close(student.call("apply_rope", x, positions, 500.0), _rope_reference(x, positions, 500.0),
                 "apply_rope(x, positions 11..15, theta=500)")


@rope.check("keeps lengths and leaves position 0 alone", points=1,
            hint="a rotation never changes a vector's length, and the angle at position 0 is 0")
def _rope_rotation(student: Student, rng: torch.Generator) -> None:
    x = torch.randn(1, 1, 4, 6, generator=rng)
    out = student.call("apply_rope", x, torch.arange(4), 10000.0)
    expect_close(out.norm(dim=-1) if isinstance(out, torch.Tensor) else out, x.norm(dim=-1), "the lengths")
    expect_close(out[..., 0, :], x[..., 0, :], "position 0")


step = exercise("03.train_step", "one training step", functions=("train_step",))

_CFG = ModelConfig(name="exercise", vocab_size=20, d_model=16, n_layers=2, n_heads=2, ffn_hidden=24, max_seq_len=32)


def _reference_step(cfg: ModelConfig, weights: dict, inputs: torch.Tensor, targets: torch.Tensor, lr: float):
    model = build_model(cfg)
    model.load_state_dict(weights)
    loss = model(inputs, targets=targets).loss
    loss.backward()
    with torch.no_grad():
        new = {name: p - lr * p.grad for name, p in model.named_parameters()}
    return loss.item(), new


def _step_case(rng: torch.Generator, cfg: ModelConfig = _CFG):
    model = build_model(cfg, seed=int(torch.randint(0, 10_000, (1,), generator=rng)))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    b, t = int(torch.randint(1, 4, (1,), generator=rng)), int(torch.randint(1, 12, (1,), generator=rng))
    inputs = torch.randint(0, cfg.vocab_size, (b, t), generator=rng)
    targets = torch.randint(0, cfg.vocab_size, (b, t), generator=rng)
    lr = float(torch.empty(()).uniform_(0.01, 0.5, generator=rng))
    return asdict(cfg), weights, inputs, targets, lr


def _call_step(student: Student, case):
    out = expect_tuple(student.call("train_step", *case), 2, "train_step should return (loss, new_weights)")
    if not isinstance(out[1], dict):
        raise AssertionError("train_step should return (loss, new_weights) with new_weights a dict of tensors")
    return out


@step.check("the loss before the step", points=1,
            hint="the loss is the model's cross-entropy on (inputs, targets), computed before the weights change")
def _step_loss(student: Student, rng: torch.Generator) -> None:
    case = _step_case(rng)
    loss, _ = _call_step(student, case)
    want, _ = _reference_step(ModelConfig(**case[0]), *case[1:])
    expect_close(torch.tensor(float(loss)), torch.tensor(want), "loss")


@step.check("every weight moves against its gradient", points=2,
            hint="new weight = weight - lr * gradient, for every parameter (zero the gradients you do not want)")
def _step_weights(student: Student, rng: torch.Generator) -> None:
    for _ in range(2):
        case = _step_case(rng)
        _, new = _call_step(student, case)
        _, want = _reference_step(ModelConfig(**case[0]), *case[1:])
        missing = sorted(set(want) - set(new))
        if missing:
            raise AssertionError(f"new_weights lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
        for name, w in want.items():
            expect_close(new[name], w, f"new_weights[{name!r}]")
