"""Decoding speed of one attention layer against the context: MHA, GQA, MLA naive, MLA absorbed.

    .venv/bin/python benchmarks/bench_decode_attention.py [--contexts 64,128,256,512,1024,2048]
        [--batches 1,8] [--repeats 30] [--threads 1] [--record minimoe/checkpoints/decode_attention.json]

Each kind is one attention layer of width 1024 with 16 heads of 64 (MLA in DeepSeek-V3's
proportions: a latent of 4 head widths, RoPE keys half a head wide), float32, for each batch size
(sequences decoded together, each with its own cache). For each
context length L the layer's cache holds L random tokens, and one new token's step (projections,
cache write, attention over L + 1 tokens, output) is timed after a warm-up: the fastest of
--repeats (``minimoe.generate.decode_step_seconds(best=True)``; on a shared machine the fastest is
the steadier estimate of the uncontended cost than the median). Next to each time: the attention's own FLOPs and cache
bytes (``minimoe.recipe.decode_attention_cost``). With --record, the results, the command, the
machine and its load are written as JSON: chapter 08 loads that file as its shipped record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

from minimoe import recipe
from minimoe.config import ModelConfig
from minimoe.generate import decode_step_seconds

BASE = ModelConfig(name="bench-mha", d_model=1024, n_heads=16, head_dim=64, n_layers=1, vocab_size=128,
                   max_seq_len=4096)
MLA = BASE.with_(name="bench-mla", attention="mla", kv_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=64,
                 v_head_dim=64)
KINDS = {  # name: (config, impl)
    "MHA": (BASE, "auto"),
    "GQA, 4 KV heads": (BASE.with_(name="bench-gqa", attention="gqa", n_kv_heads=4), "auto"),
    "MLA, naive": (MLA, "naive"),
    "MLA, absorbed": (MLA, "absorbed"),
}


def sweep(contexts: list[int], repeats: int, batch: int = 1, kinds: dict = KINDS) -> dict:
    """Seconds per decoding step (the fastest of ``repeats``), FLOPs and cache bytes (fp32, the whole
    batch) per kind and context."""
    out = {}
    for name, (cfg, impl) in kinds.items():
        costs = [recipe.decode_attention_cost(cfg, n, absorbed=impl != "naive", bytes_per_element=4) for n in contexts]
        out[name] = {"config": dict(vars(cfg)), "impl": impl,
                     "seconds": [decode_step_seconds(cfg, n, impl, batch, repeats, best=True) for n in contexts],
                     "flops": [batch * c["flops"] for c in costs],
                     "cache_bytes": [batch * c["cache_bytes"] for c in costs]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", default="64,128,256,512,1024,2048")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--record", default=None, help="write the results here as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    load_before = os.getloadavg()
    sweeps = {}
    for batch in (int(b) for b in args.batches.split(",")):
        results = sweeps[f"batch {batch}"] = sweep(contexts, args.repeats, batch)
        print(f"one attention layer's decoding step, batch {batch}: ms, the fastest of {args.repeats}, "
              f"float32, {args.threads} thread(s)")
        print(f"{'context':>8}" + "".join(f"{name:>17}" for name in results))
        for i, n in enumerate(contexts):
            print(f"{n:>8}" + "".join(f"{r['seconds'][i] * 1e3:>17.3f}" for r in results.values()))
    load_after = os.getloadavg()
    print("the attention's FLOPs per byte of cache read (fp32), the same at every context and batch:")
    print("        " + "".join(f"{r['flops'][0] / r['cache_bytes'][0]:>17.3g}" for r in results.values()))
    print(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if args.record:
        record = {
            "what": "one attention layer's decoding step against the context length (chapter 08)",
            "command": "python benchmarks/bench_decode_attention.py " + " ".join(sys.argv[1:]),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or 'cpu'}",
            "torch": torch.__version__, "threads": args.threads, "seed": 0, "repeats": args.repeats,
            "statistic": f"the fastest of {args.repeats} decoding steps, after a warm-up",
            "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
            "contexts": contexts, "sweeps": sweeps,
        }
        Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.record}")


if __name__ == "__main__":
    main()
