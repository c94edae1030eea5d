"""The decoding roofline against measured time per token on this machine (chapter 10).

    .venv/bin/python benchmarks/bench_roofline.py [--threads 1]

Measures the memory bandwidth (a large copy) and the matmul rate (a 1024² matmul), predicts each
decoding step's time with ``recipe.answer_time`` (fp32 weights and cache, as on the CPU), and times
real decoding with the KV cache for ``tiny`` and for a model eight times wider, at batch 1 and 64.
"""

from __future__ import annotations

import argparse
import sys

import torch

from minimoe import recipe
from minimoe.config import preset
from minimoe.generate import seconds_per_token
from minimoe.model import build_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bandwidth = recipe.measure_bandwidth(256, 5)
    peak = recipe.measure_matmul_flops(1024, 5)
    print(f"copy {bandwidth / 1e9:.1f} GB/s, matmul {peak / 1e9:.1f} GFLOP/s, {args.threads} thread(s)")
    print(f"{'model':16}{'params':>9}{'batch':>6}{'roofline ms':>13}{'bound':>9}{'measured ms':>13}{'ratio':>7}")
    wide = preset("tiny").with_(name="tiny, 8x wider", d_model=1024, n_heads=8, ffn_hidden=2816)
    for cfg in (preset("tiny"), wide):
        model = build_model(cfg)
        for batch in (1, 64):
            new = 4 if (cfg is wide and batch == 64) else 16
            measured = min(seconds_per_token(model, batch, 16, new) for _ in range(3))
            floor = recipe.answer_time(cfg, new, 16, batch, bandwidth=bandwidth, peak_flops=peak,
                                       weight_bytes_per_param=4, kv_bytes_per_element=4)
            bound = "memory" if floor.memory_bound_steps > 0.5 else "compute"
            print(f"{cfg.name:16}{recipe.count_params(cfg).total / 1e6:>8.2f}M{batch:>6}"
                  f"{floor.seconds_per_token * 1e3:>13.2f}{bound:>9}{measured * 1e3:>13.2f}"
                  f"{measured / floor.seconds_per_token:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
