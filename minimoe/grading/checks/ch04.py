"""Chapter 04's exercises: the MoE layer's forward from its weights, ablating an expert, predictions.

- ``04.moe_forward``: ``moe_forward(x, weights, k, token_mask)`` against ``MoELayer`` with the same
  weights (route, dispatch, combine, the shared expert, PAD positions routed nowhere).
- ``04.ablation`` (run and interpret): knock out the busiest expert of ``moe-aux``'s layer 1 and
  report the validation loss per domain; the check reruns the same experiment here.
- ``04.predict``: predict, then check; each answer is a value the check recomputes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from minimoe.config import ModelConfig
from minimoe.grading.registry import Student, exercise, expect_close, expect_equal, expect_number
from minimoe.moe import MoELayer, sigmoid_router

# --- 04.moe_forward -------------------------------------------------------------------------------


def _layer(rng: torch.Generator, n_experts: int, k: int, n_shared: int, d: int = 12, h: int = 6,
           zero_shared: bool = False) -> tuple[MoELayer, dict]:
    """An MoE layer with random weights of unit-scale outputs (init's 0.02 would make any answer 'close')."""
    cfg = ModelConfig(name="exercise", vocab_size=10, d_model=d, n_layers=1, n_heads=1, max_seq_len=64,
                      n_routed_experts=n_experts, n_shared_experts=n_shared, top_k=k, expert_hidden=h)
    layer = MoELayer(cfg, backend="loop")
    weights = {}
    for name, p in layer.state_dict().items():
        fan_in = p.shape[-2] if name.startswith("experts.") else p.shape[-1]
        w = torch.randn(p.shape, generator=rng) / math.sqrt(fan_in) if p.dtype.is_floating_point else p
        weights[name] = torch.zeros_like(w) if zero_shared and name.startswith("shared.") else w
    weights["router.bias"] = torch.zeros(n_experts)
    layer.load_state_dict(weights)
    return layer, weights


def _reference(layer: MoELayer, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        mask = None if token_mask is None else token_mask[None]
        return layer(x[None], token_mask=mask, stats=False)[0][0]  # (N, d)


def _compare_forward(student: Student, layer: MoELayer, weights: dict, x: torch.Tensor,
                     token_mask: torch.Tensor | None, what: str) -> None:
    got = student.call("moe_forward", x, weights, layer.cfg.top_k, token_mask)
    expect_close(got, _reference(layer, x, token_mask), what)


moe = exercise("04.moe_forward", "the MoE layer's forward from its weights", functions=("moe_forward",),
          protects=("minimoe.moe.layer.MoELayer.forward", "minimoe.dispatch.backends.expert_ffn", "minimoe.dispatch.sort.expert_ffn_torch", "minimoe.dispatch.sort.expert_ffn_gathered", "minimoe.dispatch.reference.expert_ffn_loop"))


@moe.check("routed experts: route, dispatch, combine", points=3,
           hint="compare with the chapter's router cells (softmax over ALL experts, then top-k, then the kept "
                "weights renormalized) and its naive dispatch loop; mind that router.weight is stored (E, d) "
                "like an nn.Linear's")
def _moe_routed(student: Student, rng: torch.Generator) -> None:
    for _ in range(2):
        e = int(torch.randint(4, 9, (1,), generator=rng))
        k = int(torch.randint(1, 4, (1,), generator=rng))
        layer, weights = _layer(rng, e, k, n_shared=1, zero_shared=True)  # shared part is 0 here
        x = torch.randn(int(torch.randint(5, 30, (1,), generator=rng)), 12, generator=rng)
        _compare_forward(student, layer, weights, x, None, f"moe_forward ({len(x)} tokens, {e} experts, top-{k})")


@moe.check("the shared expert sees every token", points=2,
           hint="the shared expert is a SwiGLU stored as three nn.Linear weights (out, in); it runs on every "
                "token and its output is added to the routed sum, with no gate weight")
def _moe_shared(student: Student, rng: torch.Generator) -> None:
    for n_shared in (1, 2):
        layer, weights = _layer(rng, 6, 2, n_shared)
        x = torch.randn(17, 12, generator=rng)
        _compare_forward(student, layer, weights, x, None, f"moe_forward with {n_shared} shared expert(s)")


@moe.check("PAD positions get no routed output", points=2,
           hint="a position whose token_mask is False is routed to no expert: its output is what every token "
                "gets whatever the router says; real tokens are unchanged by the PAD around them")
def _moe_mask(student: Student, rng: torch.Generator) -> None:
    layer, weights = _layer(rng, 8, 3, 1)
    x = torch.randn(20, 12, generator=rng)
    mask = torch.rand(20, generator=rng) < 0.6
    mask[0], mask[-1] = True, False  # at least one real token and one PAD
    _compare_forward(student, layer, weights, x, mask, f"moe_forward with {int((~mask).sum())} PAD positions")
    _compare_forward(student, layer, weights, x, torch.zeros(20, dtype=torch.bool), "moe_forward, every position PAD")


@moe.check("edge cases: an idle expert, every token on one expert, k = E, no shared expert", points=2,
           hint="an expert nobody chose must do nothing (and raise nothing); k may equal the number of experts; "
                "a layer without a shared expert has no 'shared.*' entries in weights")
def _moe_edges(student: Student, rng: torch.Generator) -> None:
    layer, weights = _layer(rng, 5, 2, 1)
    x = torch.randn(9, 12, generator=rng).abs() + 0.5  # positive inputs: a router row of ones scores sum(x)
    logits = x @ weights["router.weight"].T  # (9, 5)
    others = logits[:, 1:4].amax(1)  # (9,)
    total = x.sum(1)  # (9,) > 0
    weights["router.weight"][0] += float(((others - logits[:, 0]).clamp_min(0) + 1.0).div(total).max())
    weights["router.weight"][4] -= float(((logits[:, 4] - logits[:, 1:4].amin(1)).clamp_min(0) + 1.0).div(total).max())
    layer.load_state_dict(weights)
    idx = layer.router(x).topk_idx  # (9, 2)
    assert (idx == 0).any(1).all() and not (idx == 4).any(), "the construction puts expert 0 on every token"
    _compare_forward(student, layer, weights, x, None, "moe_forward with expert 0 on every token, expert 4 idle")
    layer, weights = _layer(rng, 4, 4, 1)
    _compare_forward(student, layer, weights, torch.randn(7, 12, generator=rng), None, "moe_forward with k = E = 4")
    layer, weights = _layer(rng, 6, 2, 0)
    _compare_forward(student, layer, weights, torch.randn(7, 12, generator=rng), None,
                     "moe_forward without a shared expert")


# --- 04.ablation (run and interpret) ----------------------------------------------------------------

ABLATION_SEED, ABLATION_SAMPLES, ABLATION_LAYER = 4, 120, 1
ABLATION_RTOL = 1e-3  # the student's kernel and the grader run the same model on the same CPU threads


@lru_cache(maxsize=1)
def ablation_rerun() -> tuple[int, dict[str, tuple[float, float]]]:
    """The experiment, rerun: (the busiest expert of layer 1, {domain: (loss before, loss after)})."""
    from minimoe.course import baked
    from minimoe.data import Mixture, collate
    from minimoe.moe.viz import expert_load

    model, _ = baked("moe-aux")
    samples = Mixture(seed=ABLATION_SEED).sample(ABLATION_SAMPLES, "val")
    busiest = int(expert_load(model, samples, layer=ABLATION_LAYER).argmax())
    domains = sorted({s.domain for s in samples})

    def losses() -> dict[str, float]:
        with torch.no_grad():
            return {d: float(model(**collate([s for s in samples if s.domain == d]).model_inputs()).ce)
                    for d in domains}

    before = losses()
    with torch.no_grad():
        model.blocks[ABLATION_LAYER].ffn.experts.w_down.weight[busiest] = 0.0
    after = losses()
    return busiest, {d: (before[d], after[d]) for d in domains}


ablation = exercise("04.ablation", "ablate the busiest expert, read the loss per domain",
                    functions=("ablated_expert", "ablation", "most_hurt"))


@ablation.check("the busiest expert of layer 1", points=1,
                hint="count layer 1's real-token assignments over the 120 validation samples of the task "
                     "(minimoe.moe.viz.expert_load) and take the expert with the largest share")
def _ablation_expert(student: Student, rng: torch.Generator) -> None:
    expect_equal(student.value("ablated_expert"), ablation_rerun()[0], "ablated_expert")


@ablation.check("the loss per domain, before and after", points=2,
                hint=f"one padded batch per domain (collate), the model's .ce on it, before and after zeroing the "
                     f"expert's w_down; compared with a rerun at rtol {ABLATION_RTOL}")
def _ablation_losses(student: Student, rng: torch.Generator) -> None:
    got, want = student.value("ablation"), ablation_rerun()[1]
    if not isinstance(got, dict) or set(got) != set(want):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise AssertionError(f"ablation: expected a dict keyed by the domains {sorted(want)}, got {keys}")
    for domain, pair in want.items():
        row = got[domain]
        if not isinstance(row, (tuple, list)) or len(row) != 2:
            raise AssertionError(f"ablation[{domain!r}]: expected (loss before, loss after), got {row!r}")
        for label, value, ref in zip(("before", "after"), row, pair):
            expect_number(value, ref, f"ablation[{domain!r}] {label}", rel=ABLATION_RTOL)


@ablation.check("the domain the ablation hurts most", points=1,
                hint="the domain whose loss rose the most (after minus before), by name")
def _ablation_hurt(student: Student, rng: torch.Generator) -> None:
    losses = ablation_rerun()[1]
    expect_equal(student.value("most_hurt"), max(losses, key=lambda d: losses[d][1] - losses[d][0]), "most_hurt")


# --- 04.predict -------------------------------------------------------------------------------------

predict = exercise("04.predict", "predict, then check",
                   functions=("groups_at_most", "tokens_changed_by_shift", "finer_activated_ratio"))


@predict.check("grouped routing: groups a token can span", points=1,
               hint="a token first keeps its best topk_groups groups, then chooses all k experts inside them")
def _predict_groups(student: Student, rng: torch.Generator) -> None:
    _, idx = sigmoid_router(torch.randn(500, 8, generator=rng), 2, n_groups=4, topk_groups=1)
    spanned = max(len(set(row)) for row in (idx // 2).tolist())
    expect_equal(student.value("groups_at_most"), spanned, "groups_at_most")


@predict.check("the same bias on every expert", points=1,
               hint="the bias enters only the choice; does adding one number to every score change which k are largest?")
def _predict_shift(student: Student, rng: torch.Generator) -> None:
    logits = torch.randn(1000, 8, generator=rng)
    changed = (sigmoid_router(logits, 2, bias=torch.full((8,), 0.3))[1].sort(-1).values
               != sigmoid_router(logits, 2)[1].sort(-1).values).any(-1)
    expect_equal(student.value("tokens_changed_by_shift"), int(changed.sum()), "tokens_changed_by_shift")


@predict.check("finer experts: activated parameters", points=1,
               hint="count the expert parameters a token uses: (number of experts it runs) x 3 x d_model x width")
def _predict_finer(student: Student, rng: torch.Generator) -> None:
    d = 128
    now, finer = 3 * 3 * d * 88, 12 * 3 * d * 22  # top-3 of width 88 against top-12 of width 22
    expect_number(student.value("finer_activated_ratio"), finer / now, "finer_activated_ratio", rel=1e-3)
