"""Chapter 05's experiment: dense against mixture-of-experts at equal activated FLOPs, on packed batches.

The settings (model width 64, 4 layers: half of ``tiny``'s width, about a quarter of its compute per
token, so that 3 seeds of every setting fit in under three hours of one CPU core; 2,400 steps of 8
packed rows of 256 tokens, learning rate 3e-3 with a cosine decay to 3e-4):

- ``dense``: the dense model at the MoE's activated width (SwiGLU hidden 176);
- ``dense-total``: a dense model as large as the MoE in total parameters (the upper bracket);
- ``moe-none``, ``moe-switch``: 16 routed experts of 44 + 1 shared, top-3 (activated hidden
  1·44 + 3·44 = 176, the dense width), softmax router, without balancing / with the Switch loss (0.01);
- ``moe-sigmoid``, ``moe-sigmoid-bias``: the same experts with DeepSeek-V3's sigmoid gate, without /
  with its auxiliary-loss-free bias (γ = 0.01), so that router type and balancing are separated;
- ``moe-fine``: fine-grained as in DeepSeekMoE, 32 experts of 22 + 2 shared of 22, top-6 (the same
  activated and total expert parameters), sigmoid gate with the bias.

The first layer stays dense in every MoE (as in ``tiny-moe``). Every run trains on the same
problems (data seed 0); a run's seed sets the initialisation and the batch order. Search runs
(``group="search"``, one seed) try what could move the result: a higher learning rate (for dense and
MoE), four times the experts, the best MoE trained as long as ``dense-16k``
(``moe-sigmoid-bias-16k``); and ``dense-16k`` and ``dense-32k`` train the dense model 6.7 and 13.3
times longer, to find the length at which its curve flattens (at 16,000 steps its last tenth still
improved it by about 2%; 3 seeds of every setting at that length alone would take about 13 CPU-hours
of this course's machine).

At the end of a run (``evaluate``), on 100 test problems per domain: the loss per domain, the
greedy answers' accuracy per domain, and for an MoE the domain x expert matrix of every MoE layer
and an ablation: for each domain, switch off in every MoE layer the top-k experts that domain uses
most, and measure the loss of every domain (and, as a control, switch off k experts drawn at random).
"""

from __future__ import annotations

import random
from functools import lru_cache
from statistics import median

import torch

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.data import DOMAINS, Mixture, collate, evaluate as grade
from minimoe.experiments.runner import Experiment, Run
from minimoe.generate import complete
from minimoe.moe import experts_switched_off, top_experts
from minimoe.moe.viz import domain_expert_matrix, moe_layers
from minimoe.train import TrainConfig

DENSE = ModelConfig(name="ch05-dense", vocab_size=100, d_model=64, n_layers=4, n_heads=4, ffn_hidden=176,
                    max_seq_len=256)
QUICK_DENSE = ModelConfig(name="ch05-quick-dense", vocab_size=100, d_model=16, n_layers=2, n_heads=2,
                          ffn_hidden=48, max_seq_len=256)
DATA_SEED = 0


def matched_dense(dense: ModelConfig, moe: ModelConfig, name: str) -> ModelConfig:
    """``dense`` with its SwiGLU widened (a multiple of 8) until its total parameters match ``moe``'s."""
    target = recipe.count_params(moe).total
    base = recipe.count_params(dense.with_(ffn_hidden=8)).total
    per_unit = dense.n_layers * recipe.swiglu_params(dense.d_model, 1)
    hidden = max(8, round((target - base) / per_unit / 8) * 8 + 8)
    return dense.with_(name=name, ffn_hidden=hidden)


def settings(quick: bool = False) -> dict[str, ModelConfig]:
    """The model of every main setting, by name (``quick``: tiny stand-ins for a smoke test)."""
    d = QUICK_DENSE if quick else DENSE
    hidden = d.dense_hidden
    coarse, shared = (4, 1) if quick else (16, 1)  # routed experts, shared experts
    k = 3 if not quick else 2
    width = hidden // (k + shared)  # 1 shared + k routed = the dense width
    prefix = d.name.removesuffix("-dense")

    def moe(name: str, **kw) -> ModelConfig:
        base = dict(name=f"{prefix}-{name}", n_routed_experts=coarse, n_shared_experts=shared, top_k=k,
                    expert_hidden=width, n_dense_layers=1)
        return d.with_(**(base | kw))

    m = 2  # fine-grained: each expert split in m, route to m·k, the shared expert split in m too
    out = {
        "dense": d,
        "moe-none": moe("moe-none"),
        "moe-switch": moe("moe-switch", aux_loss_coef=0.01),
        "moe-sigmoid": moe("moe-sigmoid", router="sigmoid"),
        "moe-sigmoid-bias": moe("moe-sigmoid-bias", router="sigmoid", bias_update_rate=0.01),
        "moe-fine": moe("moe-fine", n_routed_experts=coarse * m, n_shared_experts=shared * m, top_k=k * m,
                        expert_hidden=width // m, router="sigmoid", bias_update_rate=0.01),
    }
    out["dense-total"] = matched_dense(d, out["moe-switch"], f"{prefix}-dense-total")
    return out


# The dense run each search setting is measured against (same steps and learning rate); others: "dense".
BASELINES = {"moe-switch-lr1e-2": "dense-lr1e-2", "moe-sigmoid-bias-16k": "dense-16k",
             "dense-16k": "dense-16k", "dense-32k": "dense-32k"}  # the long dense runs: against none
LONG = ("dense-16k", "dense-32k")  # the dense model trained longer, to find where its curve flattens

MAIN_ORDER = ("dense", "dense-total", "moe-none", "moe-switch", "moe-sigmoid", "moe-sigmoid-bias", "moe-fine")


def _train(steps: int, lr: float, quick: bool) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup=2 if quick else 50, eval_every=3 if quick else 100,
                       checkpoint_every=3 if quick else 200)


def runs(quick: bool = False, seeds: int = 3) -> list[Run]:
    """Every run: the main settings x ``seeds``, then the search (seed 0 only), seed by seed."""
    s = settings(quick)
    steps = 6 if quick else 2400
    lr = 3e-3
    # 200,000 problems: 2,400 steps of 8 rows read each about once. With 60,000 (three epochs) the dense
    # model as large as the MoE did worse than dense: it memorised the direct-arithmetic problems it saw again.
    data = dict(n_train=300 if quick else 200_000, n_val=32 if quick else 512, batch_size=2 if quick else 8,
                data_seed=DATA_SEED)
    evaluation = {"per_domain": 3 if quick else 100, "max_new_tokens": 24 if quick else 160}
    load_every = 3 if quick else 100
    out = []
    for seed in range(seeds):
        for name in MAIN_ORDER:
            out.append(Run(f"{name}-s{seed}", name, seed, s[name], _train(steps, lr, quick), data,
                           load_every=load_every, evaluation=evaluation))
    if quick:
        return out
    # The search for a setting where MoE needs <= 0.6x dense's steps: one seed each.
    more = s["moe-switch"].with_(name="ch05-moe-64x44", n_routed_experts=64)  # 4x the experts, same activated
    search = [
        ("moe-64x44", more, steps, lr),  # four times the experts (and total parameters)
        ("dense-lr1e-2", s["dense"], steps, 1e-2), ("moe-switch-lr1e-2", s["moe-switch"], steps, 1e-2),
    ]
    for name, cfg, n_steps, rate in search:
        out.append(Run(f"{name}-s0", name, 0, cfg, _train(n_steps, rate, quick), data, group="search",
                       load_every=load_every, evaluation=evaluation))
    # How long until dense flattens? The dense model for 16,000 steps (6.7x), on as many more problems
    # (each still read about once), evaluated and checkpointed half as often.
    long = TrainConfig(steps=16_000, lr=lr, min_lr=lr / 10, warmup=50, eval_every=200, checkpoint_every=400)
    out.append(Run("dense-16k-s0", "dense-16k", 0, s["dense"], long, data | {"n_train": 1_300_000}, group="search",
                   load_every=200, evaluation=evaluation))
    # Does the MoE pull ahead when trained as long? The best MoE at 2,400 steps, against dense-16k.
    out.append(Run("moe-sigmoid-bias-16k-s0", "moe-sigmoid-bias-16k", 0, s["moe-sigmoid-bias"], long,
                   data | {"n_train": 1_300_000}, group="search", load_every=200, evaluation=evaluation))
    # Twice that again (16,000 was still 2% from flat), checkpointed every 500 steps.
    longer = TrainConfig(steps=32_000, lr=lr, min_lr=lr / 10, warmup=50, eval_every=200, checkpoint_every=500)
    out.append(Run("dense-32k-s0", "dense-32k", 0, s["dense"], longer, data | {"n_train": 2_600_000}, group="search",
                   load_every=200, evaluation=evaluation))
    return out


# --- the end-of-run evaluation ------------------------------------------------------------------------

@lru_cache(maxsize=4)
def eval_problems(per_domain: int) -> tuple:
    """``per_domain`` test problems of every domain (data seed 0), in ``DOMAINS`` order."""
    out = []
    for name in DOMAINS:
        out.extend(Mixture({name: 1.0}, seed=DATA_SEED).sample(per_domain, "test"))
    return tuple(out)


@torch.no_grad()
def domain_losses(model, samples, batch_size: int = 64) -> dict[str, float]:
    """Cross-entropy per scored token, per domain, of ``model`` on ``samples`` (padded batches, PAD masked)."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for name in DOMAINS:
        mine = [s for s in samples if s.domain == name]
        for i in range(0, len(mine), batch_size):
            b = collate(mine[i:i + batch_size])
            out = model(**b.model_inputs())
            total[name] = total.get(name, 0.0) + out.ce.item() * b.scored
            count[name] = count.get(name, 0) + b.scored
    return {name: total[name] / count[name] for name in total}


def evaluate(run: Run, model) -> dict:
    """Loss and answer accuracy per domain; for an MoE, the domain x expert matrices and the ablation."""
    samples = list(eval_problems(run.evaluation["per_domain"]))
    base = domain_losses(model, samples)
    report = grade(lambda prompts: complete(model, prompts, max_new_tokens=run.evaluation["max_new_tokens"]),
                   samples)
    out = {"problems_per_domain": run.evaluation["per_domain"], "loss_by_domain": base,
           "accuracy_by_domain": report.by_domain()}
    layers = moe_layers(model)
    if not layers:
        return out
    cfg = layers[0][1].cfg
    matrices = {i: domain_expert_matrix(model, samples, layer=i) for i, _ in layers}  # (domains, E) each
    top = {i: top_experts(m, cfg.top_k) for i, m in matrices.items()}  # per layer: each domain's top-k experts
    ablation = {}
    for d, name in enumerate(DOMAINS):
        with experts_switched_off(model, {i: top[i][d] for i in top}):
            ablation[name] = domain_losses(model, samples)
    rng = random.Random(f"ch05-control/{run.seed}")
    control = []
    for _ in range(3):  # k experts drawn at random in every layer: what switching off k experts costs anyway
        with experts_switched_off(model, {i: rng.sample(range(cfg.n_routed_experts), cfg.top_k) for i in top}):
            control.append(domain_losses(model, samples))
    out.update(matrices={i: m.tolist() for i, m in matrices.items()}, top_experts=top, ablation=ablation,
               control=control)
    return out


# --- the summary ---------------------------------------------------------------------------------------

def _interp_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The first x where the piecewise-linear curve through ``points`` (x, loss) falls to ``target``."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 <= target:
            if y0 <= target:
                return x0
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    if points and points[0][1] <= target:
        return points[0][0]
    return None


def _fit_improvement(points: list[tuple[int, float]], start: float, end: float) -> float | None:
    """The relative drop from ``start`` to ``end`` of the Theil-Sen line through ``points`` (its slope
    the median of the slopes between every two points, so one stray evaluation cannot tilt it).
    None with fewer than 3 points: a line through two noisy evaluations says little."""
    if len(points) < 3:
        return None
    slope = median((y1 - y0) / (x1 - x0) for i, (x0, y0) in enumerate(points) for x1, y1 in points[i + 1:])
    intercept = median(y - slope * x for x, y in points)
    return -slope * (end - start) / (intercept + slope * start)


def flattening(val: list[tuple[int, float]], window: float = 0.1) -> dict:
    """How flat a validation curve [(step, loss)] is over its last ``window`` of steps.

    - ``last_window_improvement``: the relative drop from the loss at (1 - window)·N (interpolated) to
      the last evaluation, N the last step;
    - ``fitted_improvement``: the same drop read off a robust line (Theil-Sen) through every
      evaluation in that window. Near the end of training consecutive evaluations scatter by a few
      percent, so two points cannot resolve a 1% change; a line through all of the window's can.
      None with fewer than 3 evaluations in the window;
    - ``first_flat_step``: the first evaluated step s at which the improvement from 0.9·s to s fell
      below 1% (point to point), and ``first_flat_step_fitted`` the same with the fitted line. Mid-way
      through a long cosine schedule the learning rate is still high and the loss can pause before it
      falls again, so these mark a pause, not convergence: only the last tenth of a finished schedule
      (the two improvements above) says whether a run of that length flattened.
    """
    def loss_at(step: float) -> float:  # linear interpolation between evaluations
        for (x0, y0), (x1, y1) in zip(val, val[1:]):
            if x0 <= step <= x1:
                return y0 + (y1 - y0) * (step - x0) / (x1 - x0)
        return val[0][1] if step < val[0][0] else val[-1][1]

    def fitted(end: int) -> float | None:
        start = (1 - window) * end
        return _fit_improvement([(s, y) for s, y in val if start <= s <= end], start, end)

    last_step, last = val[-1]
    start = loss_at((1 - window) * last_step)
    eligible = [(s, y) for s, y in val if s >= val[0][0] / (1 - window)]
    first_flat = next((s for s, y in eligible
                       if (loss_at((1 - window) * s) - y) / loss_at((1 - window) * s) < 0.01), None)
    first_fit = next((s for s, _ in eligible if (f := fitted(s)) is not None and f < 0.01), None)
    return {"last_window_improvement": (start - last) / start, "fitted_improvement": fitted(last_step),
            "first_flat_step": first_flat, "first_flat_step_fitted": first_fit}


def _mean_std(xs: list[float]) -> dict:
    t = torch.tensor([float(x) for x in xs], dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std().item() if len(xs) > 1 else 0.0, "min": t.min().item(),
            "max": t.max().item(), "n": len(xs)}


def summarize(records: list[dict]) -> dict:
    """Curves with seed bands, steps to reach dense's final loss, accuracy, load, specialisation, search."""
    by_setting: dict[str, list[dict]] = {}
    for r in records:
        by_setting.setdefault(r["setting"], []).append(r)
    for rs in by_setting.values():
        rs.sort(key=lambda r: r["seed"])
    out: dict = {"settings": {}, "domains": list(DOMAINS)}
    for name, rs in by_setting.items():
        final = [r["evaluations"][str(r["train_config"]["steps"])] for r in rs]
        val = [[(m["step"] + 1, m["val_ce"]) for m in r["curve"] if "val_ce" in m] for r in rs]
        entry = {
            "group": rs[0]["group"], "seeds": [r["seed"] for r in rs], "model_config": rs[0]["model_config"],
            "problems_per_domain": final[0]["problems_per_domain"],
            "params": rs[0]["params"], "train_config": rs[0]["train_config"],
            "curves": [{"step": [m["step"] + 1 for m in r["curve"] if "val_ce" in m],
                        "val_ce": [m["val_ce"] for m in r["curve"] if "val_ce" in m],
                        "flops": [m["flops"] for m in r["curve"] if "val_ce" in m],
                        "elapsed_s": [m["elapsed_s"] for m in r["curve"] if "val_ce" in m],
                        "cpu_s": [m["cpu_s"] for m in r["curve"] if "val_ce" in m]} for r in rs],
            "final_val": _mean_std([v[-1][1] for v in val]),
            "flattening": [flattening(v) for v in val],
            "cpu_s_per_step": _mean_std([r["cpu_s"] / r["train_config"]["steps"] for r in rs]),
            "accuracy_by_domain": {d: _mean_std([f["accuracy_by_domain"][d] for f in final]) for d in DOMAINS},
            "loss_by_domain": {d: _mean_std([f["loss_by_domain"][d] for f in final]) for d in DOMAINS},
            "accuracy": _mean_std([sum(f["accuracy_by_domain"].values()) / len(DOMAINS) for f in final]),
        }
        # Steps to reach the dense run's final validation loss (same seed), as a ratio of dense's steps.
        baseline = BASELINES.get(name, "dense")
        dense = {r["seed"]: r for r in by_setting.get(baseline, [])}
        reach = []
        for r, v in zip(rs, val):
            d = dense.get(r["seed"])
            if d is None or name == baseline or name in BASELINES.values():
                continue
            d_val = [(m["step"] + 1, m["val_ce"]) for m in d["curve"] if "val_ce" in m]
            target, d_steps = d_val[-1][1], d_val[-1][0]
            step = _interp_reach(v, target)
            reach.append({"seed": r["seed"], "target": target, "steps": step,
                          "ratio": None if step is None else step / d_steps})
        entry["baseline"] = baseline
        entry["reach_dense"] = reach
        ratios = [x["ratio"] for x in reach if x["ratio"] is not None]
        entry["reach_ratio"] = _mean_std(ratios) | {"not_reached": len(reach) - len(ratios)} if ratios else \
            {"not_reached": len(reach)}
        # Load over training (real tokens): max/mean and min/mean per step, averaged over seeds, thinned.
        if any(k.startswith("ffn/") for k in rs[0]["curve"][0]):
            every = max(1, rs[0]["load_history"][0]["step"] if rs[0]["load_history"] else 10)
            rows = {}
            for key in ("ffn/max_load", "ffn/min_load", "ffn/router_entropy", "ffn/balance_loss"):
                per_seed = [[m[key] for m in r["curve"]] for r in rs]
                n = min(len(p) for p in per_seed)
                windows = [sum(sum(p[i:i + every]) / len(p[i:i + every]) for p in per_seed) / len(per_seed)
                           for i in range(0, n, every)]
                rows[key.removeprefix("ffn/")] = windows
            entry["load_stats"] = {"window": every, **rows}
            entry["load_history"] = rs[0]["load_history"]  # seed 0: load per expert per layer per window
            entry["matrices"] = [f["matrices"] for f in final]
            entry["top_experts"] = [f["top_experts"] for f in final]
            entry["specialisation"] = _specialisation(final)
        out["settings"][name] = entry
    if "dense" in by_setting:
        out["dense_flattening"] = out["settings"]["dense"]["flattening"]
    return out


def _specialisation(final: list[dict]) -> dict:
    """From each seed's ablation: how much each domain's loss rises when its own top experts are switched
    off, against the mean rise of the other domains, and against k random experts switched off."""
    own, others, random_rise, table = [], [], [], []
    for f in final:
        base = f["loss_by_domain"]
        rise = {a: {d: f["ablation"][a][d] - base[d] for d in DOMAINS} for a in DOMAINS}
        table.append(rise)
        for a in DOMAINS:
            own.append(rise[a][a])
            others.append(sum(rise[a][d] for d in DOMAINS if d != a) / (len(DOMAINS) - 1))
        for c in f["control"]:
            random_rise.append(sum(c[d] - base[d] for d in DOMAINS) / len(DOMAINS))
    diff = _mean_std([o - x for o, x in zip(own, others)])  # paired: one per (seed, domain)
    diff["se"] = diff["std"] / max(1, diff["n"]) ** 0.5
    return {"own_rise": _mean_std(own), "other_rise": _mean_std(others), "random_rise": _mean_std(random_rise),
            "own_minus_other": diff, "rise_table": table}


EXPERIMENT = Experiment("ch05", "dense against mixture-of-experts at equal activated FLOPs", runs, evaluate,
                        summarize, default_seeds=3, ship={"ch05-moe": "moe-switch-s0"})
