"""Real (non-PAD) training tokens per second: padded batches against packed ones, measured in one run.

    .venv/bin/python benchmarks/bench_train_tokens.py [--presets tiny tiny-moe] [--steps 8]

On the chapter-02 mixture, for each preset, two ways to train, alternating step by step so that
both see the same machine load:

- padded (the course before packing): 32 samples per step, each batch padded to its longest
  sample; MoE layers dispatch through the per-expert ``loop`` and route every position, PAD
  included (the model is called without a token mask, exactly as the old trainer did);
- packed (now): 16 rows of 256 positions filled with whole samples, attention confined to each
  sample, PAD masked out of routing; MoE layers dispatch through ``auto``.

Both use the same model, optimizer and schedule. Prints, per preset, the PAD share of each layout,
the median step time and real tokens per second of each, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minimoe.data import Mixture
from minimoe.model import build_model
from minimoe.moe import set_dispatch_backend
from minimoe.train import SampleBatches, TrainConfig, make_optimizer


def step_fn(model, optimizer, masked: bool):
    def run(batch) -> None:
        kwargs = batch.model_inputs() if masked else {"tokens": batch.inputs, "targets": batch.targets,
                                                       "loss_mask": batch.loss_mask}
        out = model(**kwargs)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "tiny-moe"])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per layout (after 2 warm-up steps)")
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mix = Mixture(seed=0)
    train = mix.sample(args.samples, "train")
    layouts = {"padded": SampleBatches(train, batch_size=32, seed=0, pack=False),
               "packed": SampleBatches(train, batch_size=16, seed=0, pack=True, seq_len=256)}
    print(f"chapter-02 mixture, {args.samples} training samples, {args.threads} thread(s)")
    for name in args.presets:
        runs = {}
        for layout, data in layouts.items():
            model = build_model(name, seed=0)
            set_dispatch_backend(model, "loop" if layout == "padded" else "auto")
            runs[layout] = (data, step_fn(model, make_optimizer(model, TrainConfig()), masked=layout == "packed"))
        times = {k: [] for k in runs}
        real = {k: [] for k in runs}
        positions = {k: [] for k in runs}
        for step in range(args.steps + 2):
            for layout, (data, run) in runs.items():
                batch = data.batch(step)
                start = time.perf_counter()
                run(batch)
                if step >= 2:
                    times[layout].append(time.perf_counter() - start)
                    real[layout].append(batch.real_tokens)
                    positions[layout].append(batch.inputs.numel())
        speed = {}
        for layout in runs:
            t = statistics.median(times[layout])
            speed[layout] = sum(real[layout]) / sum(times[layout])
            pad = 1 - sum(real[layout]) / sum(positions[layout])
            print(f"{name:9} {layout}: PAD {pad:5.1%} of positions, median step {t * 1e3:6.0f} ms, "
                  f"{speed[layout]:7.0f} real tokens/s")
        print(f"{name:9} packed / padded real tokens per second: {speed['packed'] / speed['padded']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
