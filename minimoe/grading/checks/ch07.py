"""Chapter 07's exercises: the bytes of training state, the activation peak, what checkpointing saves, and
the bytes per GPU once the state is sharded (ZeRO and expert parallelism)."""

from __future__ import annotations

from dataclasses import asdict

import torch

from minimoe.config import ModelConfig
from minimoe.grading.registry import Student, exercise, expect_equal
from minimoe.profiler import estimate_memory
from minimoe.profiler.sharding import MIXED, state_per_gpu

state = exercise("07.training_bytes", "parameters, gradients and Adam state, to the byte",
                 functions=("training_bytes",), protects=("minimoe.profiler.estimate.estimate_memory", "minimoe.profiler.estimate.n_param_tensors"))


def _rand(rng: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _config(rng: torch.Generator, tie: bool = False) -> ModelConfig:
    heads = _rand(rng, 1, 4)
    return ModelConfig(name="exercise", vocab_size=_rand(rng, 20, 300), d_model=heads * 2 * _rand(rng, 2, 12),
                       n_layers=_rand(rng, 1, 5), n_heads=heads, ffn_hidden=_rand(rng, 8, 200),
                       tie_embeddings=tie, max_seq_len=256)


def _want_state(cfg: ModelConfig, nbytes: int) -> dict[str, int]:
    dtype = {4: torch.float32, 2: torch.bfloat16}[nbytes]
    est = estimate_memory(cfg, 1, 1, dtype=dtype)
    return {"parameters": est.parameters, "gradients": est.gradients, "adam": est.optimizer}


def _call_state(student: Student, cfg: ModelConfig, nbytes: int) -> dict:
    got = student.call("training_bytes", asdict(cfg), nbytes)
    if not isinstance(got, dict) or not {"parameters", "gradients", "adam"} <= set(got):
        raise AssertionError("training_bytes should return a dict with keys 'parameters', 'gradients', 'adam'")
    return got


@state.check("parameters and gradients", points=1,
             hint="count every weight matrix and norm vector of the model, times the bytes per number; "
                  "every parameter gets a gradient of its own size")
def _state_params(student: Student, rng: torch.Generator) -> None:
    for nbytes in (4, 2):
        cfg = _config(rng)
        got, want = _call_state(student, cfg, nbytes), _want_state(cfg, nbytes)
        for key in ("parameters", "gradients"):
            expect_equal(got[key], want[key], f"training_bytes({cfg.n_layers} layers, d={cfg.d_model}, "
                                              f"{nbytes} bytes)[{key!r}]")


@state.check("AdamW's state, step counters included", points=2,
             hint="two moments per parameter in the parameters' dtype, plus one 4-byte fp32 step counter per "
                  "parameter tensor (how many tensors does a block have?)")
def _state_adam(student: Student, rng: torch.Generator) -> None:
    for nbytes in (4, 2, 4):
        cfg = _config(rng)
        expect_equal(_call_state(student, cfg, nbytes)["adam"], _want_state(cfg, nbytes)["adam"],
                     f"training_bytes({cfg.n_layers} layers, d={cfg.d_model}, {nbytes} bytes)['adam']")


@state.check("tied embeddings", points=1,
             hint="with tie_embeddings the output head IS the embedding matrix: one tensor, counted once")
def _state_tied(student: Student, rng: torch.Generator) -> None:
    cfg = _config(rng, tie=True)
    got, want = _call_state(student, cfg, 4), _want_state(cfg, 4)
    for key in ("parameters", "adam"):
        expect_equal(got[key], want[key], f"training_bytes(tied embeddings)[{key!r}]")


peak = exercise("07.activation_peak", "find the activation peak", functions=("activation_peak",))


def _peak_reference(events: list[tuple[str, int]]) -> tuple[int, int]:
    alive = best = 0
    where = -1
    for i, (category, delta) in enumerate(events):
        if category != "activations":
            continue
        alive += delta
        if alive > best:
            best, where = alive, i
    return best, where


def _random_events(rng: torch.Generator, n: int) -> list[tuple[str, int]]:
    cats = ["activations", "temporaries", "gradients", "parameters"]
    alive = {c: [] for c in cats}
    events = []
    for _ in range(n):
        c = cats[_rand(rng, 0, 3)]
        if alive[c] and _rand(rng, 0, 2) == 0:
            size = alive[c].pop(_rand(rng, 0, len(alive[c]) - 1))
            events.append((c, -size))
        else:
            size = 4 * _rand(rng, 1, 5000)
            alive[c].append(size)
            events.append((c, size))
    return events


def _call_peak(student: Student, events) -> tuple[int, int]:
    got = student.call("activation_peak", events)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise AssertionError("activation_peak should return (peak_bytes, event_index)")
    return got


@peak.check("the most activation bytes alive at once", points=2,
            hint="keep a running sum of the activation events only (frees are negative); the peak is its maximum")
def _peak_value(student: Student, rng: torch.Generator) -> None:
    for n in (5, 60, 400):
        events = _random_events(rng, n)
        expect_equal(_call_peak(student, events)[0], _peak_reference(events)[0], f"peak of {n} random events")


@peak.check("where, ties and no activations", points=1,
            hint="return the index of the FIRST event at which the peak is reached, and (0, -1) when no "
                 "activation is ever alive")
def _peak_where(student: Student, rng: torch.Generator) -> None:
    a = 4 * _rand(rng, 1, 100)
    cases = [
        [("activations", a), ("activations", -a), ("activations", a)],  # reached twice: the first counts
        [("parameters", 64), ("gradients", 64)],  # none
        [("temporaries", 8), ("activations", a), ("temporaries", 8 * a), ("activations", -a)],
        _random_events(rng, 100),
    ]
    for events in cases:
        got = _call_peak(student, events)
        expect_equal(tuple(got), _peak_reference(events), f"activation_peak({events if len(events) < 6 else '...'})")


ckpt = exercise("07.checkpoint_saving", "predict what checkpointing saves", functions=("activation_bytes",),
    protects=("minimoe.profiler.estimate.estimate_memory",))


def _expect_activations(student: Student, rng: torch.Generator, checkpointing: bool) -> None:
    for _ in range(2):
        cfg = _config(rng)
        b, t = _rand(rng, 1, 4), _rand(rng, 2, 64)
        want = estimate_memory(cfg, b, t, checkpointing=checkpointing).activations
        expect_equal(student.call("activation_bytes", asdict(cfg), b, t, checkpointing), want,
                     f"activation_bytes({cfg.n_layers} layers, d={cfg.d_model}, f={cfg.ffn_hidden}, "
                     f"{cfg.n_heads} heads, vocab {cfg.vocab_size}, batch {b}, seq {t}, checkpointing={checkpointing})")


@ckpt.check("activations kept for backward, fp32", points=2,
            hint="go through a block op by op: what does each norm, attention and SwiGLU keep? Then the "
                 "embedding's output, the final norm, log-softmax of the logits, and RoPE's cos and sin")
def _ckpt_plain(student: Student, rng: torch.Generator) -> None:
    _expect_activations(student, rng, False)


@ckpt.check("with activation checkpointing", points=2,
            hint="a checkpointed block keeps only its input; the final norm, the loss and cos/sin are not "
                 "checkpointed, and the final norm still reads the last block's output")
def _ckpt_on(student: Student, rng: torch.Generator) -> None:
    _expect_activations(student, rng, True)


sharded = exercise("07.sharded_bytes", "bytes per GPU under ZeRO and expert parallelism", functions=("bytes_per_gpu",),
                   protects=("minimoe.profiler.sharding.sharded_memory", "minimoe.profiler.sharding.state_per_gpu"))


def _expect_sharded(student: Student, dense: int, expert: int, world: int, zero: int, ep: int) -> None:
    got = student.call("bytes_per_gpu", dense, expert, world, zero, ep)
    if not isinstance(got, dict) or not {"weights", "gradients", "optimizer"} <= set(got):
        raise AssertionError("bytes_per_gpu should return a dict with keys 'weights', 'gradients', 'optimizer'")
    want = dict(zip(("weights", "gradients", "optimizer"),
                    state_per_gpu(dense, expert // ep, world, zero, ep, MIXED)))  # each GPU holds expert / ep
    for key in ("weights", "gradients", "optimizer"):
        expect_equal(got[key], want[key], f"bytes_per_gpu({dense:,} dense, {expert:,} expert, world={world}, "
                                          f"zero={zero}, ep={ep})[{key!r}]")


@sharded.check("one GPU, and ZeRO-1", points=2,
               hint="mixed precision keeps 4 bytes of fp32 weight, 4 of gradient and 8 of Adam moments per parameter; "
                    "ZeRO-1 divides only the optimizer state among the world's GPUs")
def _sharded_zero1(student: Student, rng: torch.Generator) -> None:
    dense = _rand(rng, 1_000, 50_000)
    _expect_sharded(student, dense, 0, 1, 0, 1)
    _expect_sharded(student, dense, 0, 8, 1, 1)


@sharded.check("ZeRO-2 and ZeRO-3, shards rounded up", points=2,
               hint="ZeRO-2 shards the gradients too, ZeRO-3 the weights too; a shard of n numbers over g GPUs is "
                    "ceil(n / g), the last one padded")
def _sharded_zero23(student: Student, rng: torch.Generator) -> None:
    dense = 8 * _rand(rng, 1_000, 50_000) + 3  # not a multiple of the world: the shard rounds up
    for zero in (2, 3):
        _expect_sharded(student, dense, 0, 8, zero, 1)


@sharded.check("expert parallelism with ZeRO", points=2,
               hint="each GPU holds 1/ep of the experts, all of the dense part; a dense parameter is sharded over "
                    "all world GPUs, an expert parameter only over the world / ep GPUs that hold the same experts")
def _sharded_ep(student: Student, rng: torch.Generator) -> None:
    dense, expert = _rand(rng, 1_000, 20_000), 4 * _rand(rng, 10_000, 90_000) + 4 * 3  # divisible by ep
    _expect_sharded(student, dense, expert, 4, 0, 4)
    _expect_sharded(student, dense, expert, 8, 1, 2)
    _expect_sharded(student, dense, expert, 8, 3, 4)
