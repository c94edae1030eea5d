"""Chapter 10's experiment: a model that writes its working (chain of thought) against one that answers.

Two models of the same size (``MODEL``: width 64, 4 layers) on the same problems, addition of up to 4 digits and
multiplication of up to 3: ``cot`` trains on the worked answers, ``direct`` on the answers alone.
The loss counts answer tokens only, and a worked answer has many more of them, so "the same
training" can mean two things, and the experiment measures both:

- equal training FLOPs: the same steps of the same packed rows (every row holds about as many real
  tokens), so ``direct`` at ``cot``'s last step;
- equal supervised tokens: ``direct`` trains until it has been scored on as many answer tokens as
  ``cot`` (its rows hold fewer of them, so it trains longer); its weights at ``cot``'s step count are
  kept along the way.

At the end of each (``evaluate``): greedy accuracy and tokens per answer against the number of
digits (100 test problems per cell, addition up to 5 digits: one more than trained), and for the
test-time compute curve, 16 answers sampled at temperature 1 for 40 problems of each of the hardest
cells, from which ``summarize`` computes the majority vote's accuracy for 1, 2, 4, 8 and 16 samples.
"""

from __future__ import annotations

from functools import lru_cache

from minimoe.config import ModelConfig
from minimoe.data import Mixture, extract_answer, make_arithmetic
from minimoe.experiments.runner import Experiment, Run
from minimoe.generate import answer_all, sample_answers, vote_accuracy
from minimoe.train import TrainConfig, mixture_batches

COT = {"add_cot": 1.0, "mul_cot": 1.0}
DIRECT = {"add_direct": 1.0, "mul_direct": 1.0}
DATA_SEED = 0
QUICK_MODEL = ModelConfig(name="ch10-quick", vocab_size=100, d_model=16, n_layers=2, n_heads=2, ffn_hidden=48,
                          max_seq_len=256)
# Chapter 05's dense model (width 64, 4 layers): about a quarter of ``tiny``'s compute per token, so
# that both runs fit in a few CPU-hours.
MODEL = ModelConfig(name="ch10", vocab_size=100, d_model=64, n_layers=4, n_heads=4, ffn_hidden=176, max_seq_len=256)
DIGITS = {"add": (1, 2, 3, 4, 5), "mul": (1, 2, 3)}
VOTE_CELLS = (("add", 4), ("add", 5), ("mul", 2), ("mul", 3))
VOTES = (1, 2, 4, 8, 16)


@lru_cache(maxsize=4)
def scored_per_row(weights: tuple, n: int = 4000, seq_len: int = 256) -> float:
    """Answer tokens the loss scores per packed row of ``seq_len``, on ``n`` training problems of the mixture."""
    data = mixture_batches(n, 1, 64, 0, weights=dict(weights), seq_len=seq_len, data_seed=DATA_SEED)
    rows = data.packed.rows_per_epoch
    batch = data.packed.rows(0, rows)
    return batch.scored / rows


STEPS = 9600  # the chain-of-thought model's steps: at 2,400 it still improved 18% in its last tenth,
# and multiplied 3-digit numbers right 48% of the time


def runs(quick: bool = False, seeds: int = 1) -> list[Run]:
    """``cot`` and ``direct`` for each seed; ``direct`` trains to ``cot``'s supervised tokens, keeping its
    weights at ``cot``'s step count (equal FLOPs). Each also keeps its weights at 90% of its steps, so
    that the evaluation can say whether the last tenth of training still changed the answers."""
    model = QUICK_MODEL if quick else MODEL
    steps = 6 if quick else STEPS
    ratio = scored_per_row(tuple(COT.items())) / scored_per_row(tuple(DIRECT.items()))
    every = 3 if quick else 100
    direct_steps = max(steps + every, round(steps * ratio / every) * every)
    evaluation = {"per_cell": 2 if quick else 100, "vote_problems": 2 if quick else 40,
                  "samples": 4 if quick else 16, "temperature": 1.0, "max_new_tokens": 40 if quick else 200,
                  "digits": {"add": (1, 2)} if quick else DIGITS,
                  "vote_cells": (("add", 2),) if quick else VOTE_CELLS}

    def train(n: int) -> TrainConfig:
        return TrainConfig(steps=n, lr=3e-3, min_lr=3e-4, warmup=2 if quick else 100, eval_every=every,
                           checkpoint_every=3 if quick else 400)

    def keep(n: int, *also: int) -> tuple[int, ...]:
        """``also`` and the evaluation nearest 90% of ``n``, those before step ``n``, in order."""
        return tuple(sorted({k for k in (*also, round(0.9 * n / every) * every) if 0 < k < n}))

    # Problems enough that the chain-of-thought model reads each about twice and the direct one (more
    # steps, more problems per row) about three times: both learn to compute, not to look up.
    def data(weights: dict, n_train: int) -> dict:
        return dict(n_train=300 if quick else n_train, n_val=32 if quick else 512, batch_size=2 if quick else 16,
                    weights=weights, data_seed=DATA_SEED)

    out = []
    for seed in range(seeds):
        out.append(Run(f"cot-s{seed}", "cot", seed, model.with_(name="cot"), train(steps), data(COT, 400_000),
                       keep=keep(steps), load_every=every, evaluation=evaluation | {"form": "cot"}))
        out.append(Run(f"direct-s{seed}", "direct", seed, model.with_(name="direct"), train(direct_steps),
                       data(DIRECT, 3_200_000), keep=keep(direct_steps, steps), load_every=every,
                       evaluation=evaluation | {"form": "direct", "supervised_ratio": ratio}))
    return out


@lru_cache(maxsize=32)
def problems(op: str, digits: int, n: int, cot: bool) -> tuple:
    """``n`` test problems ``op`` ("add" or "mul") of exactly ``digits`` digits, asked with or without working."""
    name = f"{op}_direct"
    direct = Mixture({name: 1.0}, seed=DATA_SEED, difficulty={name: (digits, digits)}).sample(n, "test")
    if not cot:
        return tuple(direct)
    out = []
    for s in direct:
        a, b = s.problem.split(":", 1)[1].replace("*", "+").split("+")
        out.append(make_arithmetic("+" if op == "add" else "*", int(a), int(b), cot=True))
    return tuple(out)


def evaluate(run: Run, model) -> dict:
    """Greedy accuracy and tokens per answer by operation and digits; sampled answers for the votes."""
    e = run.evaluation
    cot = e["form"] == "cot"
    cells = {}
    for op, digits in e["digits"].items():
        for d in digits:
            answers = answer_all(model, list(problems(op, d, e["per_cell"], cot)), max_new_tokens=e["max_new_tokens"])
            cells[f"{op}{d}"] = {"n": len(answers), "accuracy": sum(a.correct for a in answers) / len(answers),
                                 "tokens": sum(a.tokens for a in answers) / len(answers)}
    votes = {}
    for op, d in e["vote_cells"]:
        asked = list(problems(op, d, e["vote_problems"], cot))
        sampled = sample_answers(model, [s.prompt for s in asked], e["samples"], e["temperature"],
                                 seed=1000 * run.seed + d, max_new_tokens=e["max_new_tokens"])
        votes[f"{op}{d}"] = {"truth": [s.answer for s in asked],
                             "answers": [[extract_answer(c) for c in cs] for cs in sampled],
                             "tokens": [[len(c) + 1 for c in cs] for cs in sampled]}  # + EOS
    return {"form": e["form"], "greedy": cells, "votes": votes}


# --- the summary ---------------------------------------------------------------------------------------

def vote_curve(votes: dict, ns=VOTES) -> dict:
    """Majority-vote accuracy and tokens spent per problem for each n, per cell and over all cells."""
    out = {}
    cells = list(votes.items())
    for name, v in cells + [("all", None)]:
        if v is None:
            answers = [a for _, c in cells for a in c["answers"]]
            truth = [t for _, c in cells for t in c["truth"]]
            tokens = [t for _, c in cells for t in c["tokens"]]
        else:
            answers, truth, tokens = v["answers"], v["truth"], v["tokens"]
        m = min(len(a) for a in answers)
        per_sample = sum(sum(t) for t in tokens) / sum(len(t) for t in tokens)
        usable = [n for n in ns if n <= m]
        out[name] = {"n": usable, "accuracy": [vote_accuracy(answers, truth, n) for n in usable],
                     "tokens": [n * per_sample for n in usable], "problems": len(answers)}
    return out


def summarize(records: list[dict]) -> dict:
    """Curves, flatness, greedy accuracy at equal FLOPs and at equal supervised tokens, vote curves."""
    from minimoe.experiments.ch05 import flattening

    out: dict = {"runs": {}}
    for r in records:
        val = [(m["step"] + 1, m["val_ce"]) for m in r["curve"] if "val_ce" in m]
        curve = [m for m in r["curve"] if "val_ce" in m]
        at = {}
        for step, ev in r["evaluations"].items():
            row = next(m for m in r["curve"] if m["step"] + 1 == int(step))
            at[step] = {"greedy": ev["greedy"], "votes": vote_curve(ev["votes"]),
                        "scored_seen": row["scored_seen"], "tokens_seen": row["tokens_seen"], "flops": row["flops"]}
        out["runs"][r["name"]] = {
            "form": r["setting"], "seed": r["seed"], "steps": r["train_config"]["steps"], "keep": r["keep"],
            "data": {k: r["data"][k] for k in ("n_train", "n_val", "batch_size", "seq_len", "mixture", "data_seed")
                     if k in r["data"]},
            "evaluation": r["evaluation_settings"],
            "model_config": r["model_config"], "params": r["params"], "train_config": r["train_config"],
            "curve": {k: [m[k] + (k == "step") for m in curve] for k in ("step", "val_ce", "flops", "scored_seen", "tokens_seen")},
            "flattening": flattening(val), "at": at, "cpu_s": r["cpu_s"], "elapsed_s": r["elapsed_s"],
        }
    return out


EXPERIMENT = Experiment("ch10", "chain of thought against direct answers, at equal FLOPs and equal supervised tokens",
                        runs, evaluate, summarize, default_seeds=1, ship={"cot": "cot-s0", "direct": "direct-s0"})
