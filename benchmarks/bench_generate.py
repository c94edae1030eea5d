"""How much the KV cache speeds up decoding, measured here and now.

    .venv/bin/python benchmarks/bench_generate.py [--preset tiny] [--prompt 56] [--new 200] [--batch 1]

Prints tokens per second with and without the cache and their ratio, from one run on this machine
(the median of a few repeats). Greedy decoding, so both paths produce the same tokens; the script
checks that too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minimoe.course import device as best_device
from minimoe.generate import generate
from minimoe.model import build_model


def time_it(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt", type=int, default=56, help="prompt tokens (56 + 200 new: a 256-token context)")
    p.add_argument("--new", type=int, default=200)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wall", action="store_true",
                   help="time wall-clock (default on a CPU: this process's CPU time, which a shared machine "
                        "distorts far less)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = best_device()
    torch.manual_seed(0)
    model = build_model(args.preset).to(dev)
    prompt = torch.randint(4, model.cfg.vocab_size, (args.batch, args.prompt), device=dev)
    with_cache = generate(model, prompt, args.new, temperature=0)
    without = generate(model, prompt, args.new, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without), "the cache changed the greedy tokens"
    clock = time.perf_counter if (args.wall or dev.type != "cpu") else time.process_time
    t_cache = time_it(lambda: generate(model, prompt, args.new, temperature=0), args.repeats, clock)
    t_plain = time_it(lambda: generate(model, prompt, args.new, temperature=0, use_cache=False), args.repeats, clock)
    n = args.batch * args.new
    print(f"{args.preset} on {dev}: prompt {args.prompt}, {args.new} new tokens (context {args.prompt + args.new}), "
          f"batch {args.batch}, {args.threads} thread(s), {'CPU' if clock is time.process_time else 'wall-clock'} time")
    print(f"  with cache:    {n / t_cache:8.1f} tokens/s")
    print(f"  without cache: {n / t_plain:8.1f} tokens/s")
    print(f"  speed-up:      {t_plain / t_cache:.2f}x")


if __name__ == "__main__":
    main()
