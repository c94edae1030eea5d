"""Chapter 04's exercises: a top-k softmax router, and DeepSeek-V3's biased selection."""

from __future__ import annotations

import torch

from minimoe.grading.registry import Student, exercise, expect_close
from minimoe.moe import sigmoid_router, softmax_router


def _by_expert(out, n: int, k: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, idx) with each row sorted by expert id, so any order of the k choices is accepted."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"{what}: expected a pair (weights, idx), got {type(out).__name__}")
    weights, idx = out
    for name, t in (("weights", weights), ("idx", idx)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, k):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise AssertionError(f"{what}: expected {name} of shape {(n, k)}, got {got}")
    if idx.dtype.is_floating_point:
        raise AssertionError(f"{what}: idx should hold integer expert ids, got {idx.dtype}")
    order = idx.argsort(dim=-1)
    return weights.float().gather(1, order), idx.long().gather(1, order)


def _compare(got, want, n: int, k: int, what: str) -> None:
    gw, gi = _by_expert(got, n, k, what)
    ww, wi = _by_expert(want, n, k, "reference")
    if not torch.equal(gi, wi):
        row = int((gi != wi).any(-1).nonzero()[0])
        raise AssertionError(f"{what}: token {row} chose experts {gi[row].tolist()}, expected {wi[row].tolist()}")
    expect_close(gw, ww, f"{what}: the gate weights")


topk = exercise("04.topk_router", "a top-k softmax router", functions=("topk_router",),
    protects=("minimoe.moe.router.softmax_router", "minimoe.moe.router.mixtral_router"))


@topk.check("softmax, then the k largest", points=2,
            hint="take the softmax over ALL experts first, then keep the k largest probabilities and their expert ids")
def _topk_plain(student: Student, rng: torch.Generator) -> None:
    n, e = int(torch.randint(3, 20, (1,), generator=rng)), int(torch.randint(4, 12, (1,), generator=rng))
    logits = torch.randn(n, e, generator=rng) * 2
    for k in (1, 2):
        _compare(student.call("topk_router", logits, k, False), softmax_router(logits, k), n, k,
                 f"topk_router(logits {n}x{e}, k={k}, renormalize=False)")


@topk.check("renormalized weights sum to 1", points=2,
            hint="with renormalize=True divide the k chosen probabilities by their own sum (not by the sum over all experts)")
def _topk_renorm(student: Student, rng: torch.Generator) -> None:
    n, e = 15, 8
    logits = torch.randn(n, e, generator=rng) * 3
    k = int(torch.randint(2, 5, (1,), generator=rng))
    _compare(student.call("topk_router", logits, k, True), softmax_router(logits, k, renormalize=True), n, k,
             f"topk_router(logits {n}x{e}, k={k}, renormalize=True)")


@topk.check("edge cases: k = 1 renormalized, k = E, large logits", points=1,
            hint="k=1 renormalized gives weight 1; k=E keeps every expert; a softmax must not overflow on logits near 100")
def _topk_edges(student: Student, rng: torch.Generator) -> None:
    logits = torch.randn(6, 5, generator=rng)
    _compare(student.call("topk_router", logits, 1, True), softmax_router(logits, 1, renormalize=True), 6, 1,
             "topk_router(k=1, renormalize=True)")
    _compare(student.call("topk_router", logits, 5, False), softmax_router(logits, 5), 6, 5, "topk_router(k=E)")
    big = torch.randn(4, 6, generator=rng) + 100.0
    _compare(student.call("topk_router", big, 2, False), softmax_router(big, 2), 4, 2, "topk_router(logits near 100)")


v3 = exercise("04.v3_gate", "DeepSeek-V3's gate: the bias chooses, the affinities weigh", functions=("v3_gate",),
    protects=("minimoe.moe.router.sigmoid_router",))


@v3.check("without a bias: sigmoid, top-k, normalize, scale", points=1,
          hint="affinities are sigmoid(logits); the weights are the chosen affinities divided by their sum, times scaling")
def _v3_plain(student: Student, rng: torch.Generator) -> None:
    logits = torch.randn(12, 8, generator=rng)
    _compare(student.call("v3_gate", logits, torch.zeros(8), 3, 1.0), sigmoid_router(logits, 3), 12, 3,
             "v3_gate(bias=0, k=3, scaling=1)")


@v3.check("the bias changes the choice only", points=3,
          hint="add the bias to the affinities to CHOOSE the top-k, but take the weights from the affinities WITHOUT the bias")
def _v3_bias(student: Student, rng: torch.Generator) -> None:
    n, e = 20, 10
    logits = torch.randn(n, e, generator=rng)
    bias = torch.randn(e, generator=rng) * 0.5
    want = sigmoid_router(logits, 4, bias=bias, scaling=2.5)
    _compare(student.call("v3_gate", logits, bias, 4, 2.5), want, n, 4, "v3_gate(random bias, k=4, scaling=2.5)")


@v3.check("a bias that shifts every expert equally changes nothing", points=1,
          hint="the same number added to every expert's score leaves the top-k and the unbiased weights as they were")
def _v3_shift(student: Student, rng: torch.Generator) -> None:
    logits = torch.randn(9, 6, generator=rng)
    _compare(student.call("v3_gate", logits, torch.full((6,), 3.0), 2, 1.0), sigmoid_router(logits, 2), 9, 2,
             "v3_gate(bias = 3 for every expert)")
