"""Chapter 03's exercises: attention with many heads (and grouped-query attention) built from one head;
a learning-rate sweep the student runs and reads, checked against a rerun here; three predictions,
each checked against a measurement of the real thing.

Tolerances: attention outputs are compared in float32 with ``TOLERANCES`` (rtol 1.3e-6, atol 1e-5,
on outputs of size about 1); the sweep's validation losses within 1% of this module's rerun (the
same model, seed, batches and schedule: only the order of float sums may differ); the first-loss
prediction within 0.1 nats of a measured untrained model.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from minimoe.config import ModelConfig
from minimoe.data import Mixture, collate
from minimoe.generate import generate
from minimoe.grading.registry import Student, exercise, expect_close, expect_number
from minimoe.model import Attention, build_model, rope_angles

# --- 03.mha -------------------------------------------------------------------------------------

mha = exercise("03.mha", "multi-head and grouped-query attention from one head", functions=("multi_head_attention",),
              protects=("minimoe.model.attention.Attention.forward", "minimoe.model.attention.reference_attention"))


def _randint(rng: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _expect_near(got, want: float, what: str, atol: float) -> None:
    """``got`` is a number within ``atol`` of ``want`` (for answers that may be 0, where a relative bound fails)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{what}: expected a number, got {type(got).__name__}")
    if not abs(got - want) <= atol:  # NaN fails too
        raise AssertionError(f"{what}: got {got:.6g}, off by more than {atol:g}")


def _attention_case(rng: torch.Generator, n_heads: int, n_kv_heads: int, t: int, start: int = 0, gaps: bool = False):
    """Random weights in the package's Attention; returns (the student's arguments, the layer's output).

    Positions are ``start, start + 1, ...``, or with ``gaps`` increasing with random gaps (RoPE depends
    only on distances, so an offset alone changes nothing; gaps change the distances).
    """
    head_dim = 2 * _randint(rng, 1, 6)  # even: RoPE turns channels in pairs
    cfg = ModelConfig(name="check", vocab_size=10, d_model=n_heads * head_dim, n_layers=1, n_heads=n_heads,
                      attention="mha" if n_kv_heads == n_heads else "gqa", n_kv_heads=n_kv_heads,
                      ffn_hidden=8, max_seq_len=64)
    layer = Attention(cfg)
    with torch.no_grad():
        for p in layer.parameters():  # outputs of size about 1, so the tolerances mean what they say
            p.copy_(torch.randn(p.shape, generator=rng) / math.sqrt(p.shape[1]))
    x = torch.randn(t, cfg.d_model, generator=rng)
    positions = torch.arange(start, start + t)
    if gaps:
        positions = start + torch.randint(1, 6, (t,), generator=rng).cumsum(0)
    cos, sin = rope_angles(positions, head_dim, cfg.rope_theta)
    with torch.no_grad():
        want = layer(x[None], cos, sin)[0]  # (T, d_model)
    weights = [w.detach().clone() for w in (layer.wq.weight, layer.wk.weight, layer.wv.weight, layer.wo.weight)]
    return (x, *weights, n_heads, n_kv_heads, positions), want


def _check_attention(student: Student, args: tuple, want: torch.Tensor) -> None:
    x, _, _, _, _, n_heads, n_kv, positions = args
    what = (f"multi_head_attention(x of shape {tuple(x.shape)}, n_heads={n_heads}, n_kv_heads={n_kv}, "
            f"positions {positions[0].item()}..{positions[-1].item()})")
    expect_close(student.call("multi_head_attention", *args), want, what)


@mha.check("several heads, each with its own keys and values", points=2,
           hint="project x with wq, wk, wv; split the channels into n_heads slices of head_dim = rows of wq / n_heads; "
                "rotate q and k by RoPE; run one_head on each slice; put the heads side by side; multiply by wo.T")
def _mha_heads(student: Student, rng: torch.Generator) -> None:
    for _ in range(2):
        n = _randint(rng, 2, 4)
        _check_attention(student, *_attention_case(rng, n, n, _randint(rng, 2, 12)))


@mha.check("grouped-query attention: query heads share keys and values", points=2,
           hint="with n_kv_heads < n_heads, wk and wv make only n_kv_heads heads; query head h reads key/value head "
                "h // (n_heads // n_kv_heads), so neighbouring query heads share one")
def _mha_groups(student: Student, rng: torch.Generator) -> None:
    for n_kv in (1, 2):
        n = n_kv * _randint(rng, 2, 3)
        _check_attention(student, *_attention_case(rng, n, n_kv, _randint(rng, 2, 12)))


@mha.check("one token, one head, and positions that are not 0, 1, 2, ...", points=1,
           hint="rotate by the positions you are given (they may skip: a token's angle is its own position times "
                "the frequency), and make sure a single token and a single head keep their shapes")
def _mha_edges(student: Student, rng: torch.Generator) -> None:
    _check_attention(student, *_attention_case(rng, 1, 1, 1, start=_randint(rng, 1, 40)))
    _check_attention(student, *_attention_case(rng, 2, 1, 1, start=_randint(rng, 1, 40)))
    _check_attention(student, *_attention_case(rng, 4, 2, _randint(rng, 3, 9), start=_randint(rng, 0, 20), gaps=True))


# --- 03.lr_sweep --------------------------------------------------------------------------------
# The run the notebook describes, word for word: the student reports its numbers, this reruns it.

SWEEP_MODEL = ModelConfig(name="small", vocab_size=100, d_model=32, n_layers=2, n_heads=2, ffn_hidden=64,
                          max_seq_len=64)
SWEEP_LRS = (1e-4, 1e-3, 1e-2, 1e-1)
SWEEP_STEPS = 60
SWEEP_MIX = {"add_direct": 1, "copy": 1, "reverse": 1, "sort": 1}


@lru_cache(maxsize=1)
def sweep_reference() -> tuple[float, dict[float, float]]:
    """(validation loss before training, {lr: validation loss after SWEEP_STEPS steps}), rerun here."""
    from minimoe.train import Trainer, TrainConfig, mixture_batches

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the notebook's setup() does: the same order of float sums
    try:
        initial, final = None, {}
        for lr in SWEEP_LRS:
            data = mixture_batches(n_train=1000, n_val=64, batch_size=8, seed=0, weights=SWEEP_MIX, seq_len=64)
            trainer = Trainer(build_model(SWEEP_MODEL, seed=0), data,
                              TrainConfig(steps=SWEEP_STEPS, lr=lr, min_lr=lr / 10, warmup=SWEEP_STEPS // 10,
                                          eval_every=SWEEP_STEPS), progress=False)
            initial = trainer.validate() if initial is None else initial
            trainer.fit()
            final[lr] = trainer.metrics[-1]["val_ce"]
        return initial, final
    finally:
        torch.set_num_threads(threads)


sweep = exercise("03.lr_sweep", "a learning-rate sweep, run and read",
                 functions=("initial_val", "final_val", "best_lr", "barely_learns"))


def _reported_losses(student: Student) -> dict[float, float]:
    got = student.value("final_val")
    if not isinstance(got, dict):
        raise AssertionError(f"final_val: expected a dict {{learning rate: validation loss}}, got {type(got).__name__}")
    keys = sorted(float(k) for k in got)
    if len(keys) != len(SWEEP_LRS) or any(abs(k - lr) > 1e-12 for k, lr in zip(keys, SWEEP_LRS)):
        raise AssertionError(f"final_val: expected one entry per learning rate {list(SWEEP_LRS)}, got keys {keys}")
    return {float(k): v for k, v in got.items()}


@sweep.check("the validation loss before training", points=1,
             hint="call validate() on a fresh Trainer before fit(); an untrained model scores about ln(vocab)")
def _sweep_initial(student: Student, rng: torch.Generator) -> None:
    initial, _ = sweep_reference()
    expect_number(student.value("initial_val"), initial, "initial_val (rerun here)", rel=1e-3)


@sweep.check("the final validation loss of every learning rate", points=2,
             hint="train a fresh build_model(SMALL, seed=0) for each rate with sweep_config(lr), on a fresh "
                  "sweep_batches(), and read the 'val_ce' of the last record")
def _sweep_final(student: Student, rng: torch.Generator) -> None:
    _, final = sweep_reference()
    for lr, value in _reported_losses(student).items():
        expect_number(value, final[lr], f"final_val[{lr:g}] (rerun here)", rel=1e-2)


@sweep.check("what the sweep says: the best rate, and the rates that barely learn", points=1,
             hint="best_lr: the rate with the lowest final validation loss; barely_learns: every rate whose final "
                  "loss is still above 95% of the loss before training")
def _sweep_reading(student: Student, rng: torch.Generator) -> None:
    initial, final = sweep_reference()
    best = min(final, key=final.get)
    expect_number(student.value("best_lr"), best, "best_lr")
    got = student.value("barely_learns")
    if not isinstance(got, (list, tuple)):
        raise AssertionError(f"barely_learns: expected a list of learning rates, got {type(got).__name__}")
    want = sorted(lr for lr in SWEEP_LRS if final[lr] > 0.95 * initial)
    if sorted(float(v) for v in got) != want:
        raise AssertionError(f"barely_learns: got {sorted(got)}; look again at each rate's final loss against "
                             f"initial_val")


# --- 03.predict ---------------------------------------------------------------------------------

predict = exercise("03.predict", "predict, then check", functions=("first_loss", "cache_positions", "pad_share"))


@predict.check("the loss of an untrained model", points=1,
               hint="an untrained model gives every token about the same probability, 1 / vocab_size; the loss is "
                    "-log of the probability of the right token (tolerance: 0.1 of a measured model's loss)")
def _predict_first_loss(student: Student, rng: torch.Generator) -> None:
    for vocab in (2, _randint(rng, 10, 60), _randint(rng, 500, 3000)):
        cfg = ModelConfig(name="fresh", vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, ffn_hidden=32,
                          max_seq_len=32)
        tokens = torch.randint(0, vocab, (4, 17), generator=rng)
        with torch.no_grad():
            measured = build_model(cfg, seed=_randint(rng, 0, 999))(tokens[:, :-1], targets=tokens[:, 1:]).ce.item()
        _expect_near(student.call("first_loss", vocab), measured,
                     f"first_loss({vocab}) against a measured untrained model ({measured:.3f})", atol=0.1)


@predict.check("how many positions the KV cache holds after generating", points=1,
               hint="the prompt goes in whole; after that each new token is fed back, except the last one drawn "
                    "(nothing comes after it)")
def _predict_cache(student: Student, rng: torch.Generator) -> None:
    cfg = ModelConfig(name="check", vocab_size=20, d_model=16, n_layers=1, n_heads=2, ffn_hidden=16, max_seq_len=64)
    model = build_model(cfg, seed=0)
    caches = []
    new_cache = model.new_cache
    model.new_cache = lambda *a, **k: caches.append(new_cache(*a, **k)) or caches[-1]
    for prompt_len, n_new in ((1, 1), (_randint(rng, 2, 20), 1), (_randint(rng, 1, 20), _randint(rng, 2, 30))):
        prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=rng)
        generate(model, prompt, n_new, temperature=0)
        measured = caches[-1].length
        got = student.call("cache_positions", prompt_len, n_new)
        expect_number(got, measured, f"cache_positions({prompt_len}, {n_new}), measured {measured}", rel=0)


@predict.check("the share of PAD in a padded batch", points=1,
               hint="a sample of L tokens takes L - 1 positions (the model reads all but the last); every row is as "
                    "long as the longest; the rest of each row is PAD")
def _predict_pad(student: Student, rng: torch.Generator) -> None:
    mix = Mixture(seed=_randint(rng, 0, 10_000))
    for n in (1, _randint(rng, 2, 5), _randint(rng, 20, 60)):
        samples = mix.sample(n)
        batch = collate(samples)
        lengths = [int(row.sum()) + 1 for row in batch.token_mask]  # tokens of BOS prompt SEP completion EOS
        _expect_near(student.call("pad_share", lengths), batch.pad_fraction,
                     f"pad_share({lengths[:6]}{'...' if n > 6 else ''}), measured {batch.pad_fraction:.4f}", atol=1e-9)
