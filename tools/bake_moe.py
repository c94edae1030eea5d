"""Train and export chapter 05's runs: dense against MoE, and the balancing variants.

    python tools/bake_moe.py --preset tiny-moe-aux --steps 800 --out runs/moe-aux \
        --export minimoe/checkpoints/moe-aux.pt

It trains exactly as ``minimoe train`` does (same Trainer, same chapter-02 mixture, same schedule
for the same flags), through ``minimoe.experiments.RecordingTrainer``, which also keeps what chapter
05 plots: every step's routing statistics (``ffn/max_load``, ``ffn/router_entropy``, ...), the
wall-clock time and input tokens so far, and each MoE layer's load per expert on real tokens averaged
over every ``--eval-every`` steps. ``--export`` writes the weights in fp16 with all of that in
``extra`` (``minimoe export`` keeps only the loss curve).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from minimoe.config import preset
from minimoe.experiments import RecordingTrainer
from minimoe.model import build_model
from minimoe.train import TrainConfig, mixture_batches, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=16, help="packed rows per step")
    ap.add_argument("--seq-len", type=int, default=256, help="positions per packed row")
    ap.add_argument("--dispatch", default="auto", choices=("auto", "torch", "triton", "loop"))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--samples", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", default=None, help="write the fp16 checkpoint with its curves here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = preset(args.preset)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, min_lr=args.lr / 10, warmup=min(args.warmup, args.steps),
                       eval_every=args.eval_every, checkpoint_every=args.steps)
    data = mixture_batches(args.samples, 512, args.batch_size, args.seed, seq_len=args.seq_len)
    model = build_model(cfg, seed=args.seed)
    trainer = RecordingTrainer(model, data, tcfg, out_dir=args.out, progress=False, load_every=args.eval_every)
    start = time.perf_counter()
    metrics = trainer.fit()
    seconds = time.perf_counter() - start
    last = metrics[-1]
    print(f"{args.preset}: {trainer.step} steps in {seconds:.0f} s, final val_ce {last.get('val_ce', float('nan')):.4f}")

    if args.export:
        keep = ("step", "ce", "val_ce", "aux_loss", "elapsed_s")
        rows = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()
                 if k in keep or k.startswith("ffn/")} | {"input_tokens": m["tokens_seen"]} for m in metrics]
        # Layer numbers as ints, as chapters 04 and 05 index them (the recorder keeps JSON's strings).
        history = [{"step": h["step"], "load": {int(i): v for i, v in h["load"].items()},
                    "bias": {int(i): v for i, v in h["bias"].items()}} for h in trainer.load_history]
        command = "python tools/bake_moe.py " + " ".join(sys.argv[1:] if argv is None else argv)
        path = save_checkpoint(args.export, model, None, trainer.step, None, data.describe(),
                               weights_dtype=torch.float16,
                               extra={"metrics": rows, "load_history": history, "command": command,
                                      "train_config": {k: getattr(tcfg, k) for k in ("steps", "lr", "min_lr", "warmup")}
                                      | {"batch_size": args.batch_size, "seq_len": args.seq_len,
                                         "threads": args.threads, "dispatch": trainer.dispatch}})
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
