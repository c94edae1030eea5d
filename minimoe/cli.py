"""The ``minimoe`` command: ``minimoe grade ...``, ``minimoe release``, ``minimoe bench dispatch``,
``minimoe experiment ch05|ch10``, ``minimoe kitchen``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, need a positive number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"got {text!r}, need a positive number")
        return value
    return parse


def _cmd_grade(args: argparse.Namespace) -> int:
    import re

    from minimoe.grading.grader import (GradingError, ReportWriter, format_result, format_summary, grade_notebook,
                                        resolve_chapter)
    from minimoe.grading.kernel import Limits

    if args.gradescope_bundle:
        from minimoe.grading.gradescope import write_bundle

        try:
            target = write_bundle(args.gradescope_bundle, Path(args.out) / "autograder.zip"
                                  if args.bundle_out is None else Path(args.bundle_out),
                                  timeout=args.timeout, cell_timeout=args.cell_timeout, memory_gb=args.memory,
                                  sandbox=not args.no_sandbox)
        except (GradingError, ValueError) as e:
            print(f"minimoe grade: {e}", file=sys.stderr)
            return 2
        print(f"wrote {target}")
        return 0
    if not args.paths:
        print("minimoe grade: give the submitted notebooks (or --gradescope-bundle CHAPTER)", file=sys.stderr)
        return 2
    limits = Limits(timeout=args.timeout, cell_timeout=args.cell_timeout, memory_gb=args.memory)
    missing = [p for p in args.paths if not Path(p).is_file()]
    if missing:
        print(f"minimoe grade: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.student_id:
        try:
            re.compile(args.student_id)
        except re.error as e:
            print(f"minimoe grade: --student-id: not a regular expression ({e})", file=sys.stderr)
            return 2
    try:
        chapter = resolve_chapter(args.chapter)
    except GradingError as e:
        print(f"minimoe grade: {e}", file=sys.stderr)
        return 2
    if args.no_sandbox:
        print("minimoe grade: --no-sandbox: the notebooks run as you, with your files in reach; "
              "every report says so", file=sys.stderr)
    else:
        from minimoe.grading.sandbox import probe

        why = probe()
        if why:
            print(f"minimoe grade: the sandbox cannot run here ({why}); --no-sandbox grades without it, "
                  "only for submissions isolated some other way", file=sys.stderr)
            return 2
    paths = [Path(p) for p in args.paths]
    writer = ReportWriter(Path(args.out), paths, args.student_id)
    results, failures = [], 0
    try:
        for i, path in enumerate(paths, 1):
            print(f"[{i}/{len(paths)}] grading {path} ...", flush=True)
            try:
                result = grade_notebook(path, limits, chapter=chapter, sandbox=not args.no_sandbox)
            except GradingError as e:
                print(f"minimoe grade: {e}", file=sys.stderr)
                failures += 1
                continue
            results.append(result)
            writer.add(result)
            print(format_result(result), flush=True)
    finally:
        writer.close()
    if results:
        print()
        print(format_summary(results))
        for target in writer.written:
            print(f"wrote {target}")
    # The exit status says whether grading ran, never what the students scored.
    return 1 if failures else 0


def _cmd_release(args: argparse.Namespace) -> int:
    from minimoe.grading.release import release
    from minimoe.publish import current_address, disagreements, publish

    root = Path(args.root)
    try:
        changes = publish(root, args.repo, args.ref, check_only=args.check)
        stale = release(root / "solutions", root / "exercises", check_only=args.check)
        problems = disagreements(root) if args.check else []
    except ValueError as e:  # a bad --repo or --ref, a solution whose markers do not pair up
        print(f"minimoe release: {e}", file=sys.stderr)
        return 2
    if args.check:
        for c in changes:
            print(f"would change {c}")
        for p in stale:
            print(f"out of date: {p}")
        for p in problems:
            print(f"disagrees: {p}")
        if changes or stale or problems:
            print("run `make release` to write them", file=sys.stderr)
        return 1 if changes or stale or problems else 0
    for c in changes:
        print(f"changed {c}")
    for p in stale:
        print(f"wrote {p}")
    repo, ref = current_address(root)
    print(f"{len(changes)} link change(s), {len(stale)} exercise notebook(s) written; "
          f"Colab opens and installs {repo} at {ref}")
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from minimoe import recipe
    from minimoe.config import preset

    try:
        if args.preset:
            cfg = preset(args.preset)
            counts = recipe.count_params(cfg)
            print(f"{cfg.name}: parameters by component")
            print(recipe.format_params(cfg))
            if cfg.name == "deepseek-v3" and args.tokens is None:
                print()
                print(recipe.format_deepseek_v3())
                return 0
            n_params, tokens = counts.activated, args.tokens or 20 * counts.activated
            print()
        elif args.params:
            n_params, tokens = args.params, args.tokens
            if tokens is None:
                raise ValueError("tokens: --params needs --tokens too")
        else:
            raise ValueError("give --preset NAME or --params N --tokens D")
        print(recipe.format_cost(n_params, tokens, args.gpu, args.mfu, args.price, args.gpus, args.fp8))
    except ValueError as e:
        print(f"minimoe recipe: {e}", file=sys.stderr)
        return 2
    return 0


def _mix(text: str | None) -> dict[str, float] | None:
    """``"add_cot=1,mul_cot=2"`` -> ``{"add_cot": 1.0, "mul_cot": 2.0}``."""
    if not text:
        return None
    weights = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            weights[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"mix: got {part!r}, need domain=weight") from None
    return weights


def _cmd_train(args: argparse.Namespace) -> int:
    from minimoe.config import preset
    from minimoe.model import build_model
    from minimoe.train import Trainer, TrainConfig, TrainingDiverged, TextBatches, mixture_batches

    out = Path(args.out)
    if args.expert_parallel:
        return _train_expert_parallel(args, out)
    try:
        cfg = preset(args.preset)
        tcfg = TrainConfig(steps=args.steps, lr=args.lr, min_lr=min(args.lr, args.lr / 10),
                           warmup=min(args.warmup, args.steps), eval_every=args.eval_every,
                           checkpoint_every=args.checkpoint_every)
        existing = out / "checkpoint.pt"
        _check_resumable(out, cfg)  # before anything is written
        if args.seq_len > cfg.max_seq_len:
            raise ValueError(f"--seq-len: got {args.seq_len}, need at most the model's {cfg.max_seq_len} positions")
        if args.data:
            from minimoe.data import load_text

            corpus = load_text(args.data)
            data = TextBatches(corpus, args.batch_size, min(args.seq_len, cfg.max_seq_len - 1), args.seed)
        else:
            data = mixture_batches(args.samples, 512, args.batch_size, args.seed, weights=_mix(args.mix),
                                   signed=args.signed, signer=args.signer, pack=not args.no_pack,
                                   seq_len=args.seq_len)
    except (ValueError, OSError) as e:
        print(f"minimoe train: {e}", file=sys.stderr)
        return 2
    model = build_model(cfg, seed=args.seed)
    trainer = Trainer(model, data, tcfg, out_dir=out, progress=True, dispatch=args.dispatch)
    described = data.describe()
    layout = (f"packed rows of {described['seq_len']}" if described.get("packed") else "padded samples")
    print(f"training {cfg.name}: {args.batch_size} {layout} per step, dispatch {trainer.dispatch or 'none (dense)'}",
          flush=True)
    if existing.exists():
        step = trainer.resume()
        print(f"resuming {out} from step {step}")
    try:
        metrics = trainer.fit()
    except TrainingDiverged as e:
        print(f"minimoe train: {e}", file=sys.stderr)
        return 1
    if metrics:
        last = metrics[-1]
        val = f", validation {last['val_ce']:.4f}" if "val_ce" in last else ""
        print(f"step {trainer.step}: loss {last['loss']:.4f}{val}, {last['tokens_per_s']:.0f} real tokens/s")
    print(f"wrote {out / 'checkpoint.pt'}, {out / 'metrics.jsonl'}, {out / 'loss.png'}")
    return 0


def _check_resumable(out: Path, cfg) -> int:
    """The step ``out``'s checkpoint continues from (0 without one); CheckpointError if it is another model's."""
    from minimoe.train import CheckpointError, config_from_checkpoint, read_checkpoint

    if not (out / "checkpoint.pt").exists():
        return 0
    old = read_checkpoint(out / "checkpoint.pt")
    if config_from_checkpoint(old) != cfg:
        raise CheckpointError(f"{out} holds a checkpoint of model {old['model_config'].get('name')!r}, "
                              f"not of preset {cfg.name!r}; choose another --out or the same --preset")
    return int(old["step"])


def _train_expert_parallel(args: argparse.Namespace, out: Path) -> int:
    from minimoe.config import preset
    from minimoe.parallel import DistributedError, launch, train_worker
    from minimoe.train import CheckpointError

    try:
        cfg = preset(args.preset)
        if not cfg.is_moe:
            raise ValueError(f"--expert-parallel: preset {cfg.name!r} has no experts to shard")
        if cfg.n_routed_experts % args.expert_parallel:
            raise ValueError(f"--expert-parallel: {cfg.n_routed_experts} experts do not split over {args.expert_parallel} processes")
        one_process_only = [name for name, used in (("--data", args.data), ("--mix", args.mix), ("--signed", args.signed),
                                                    ("--no-pack", args.no_pack), ("--seq-len", args.seq_len != 256))
                            if used]
        if one_process_only:
            raise ValueError(f"--expert-parallel: trains on the default mixture in packed rows of 256; "
                             f"{', '.join(one_process_only)} work in one process only")
        start = _check_resumable(out, cfg)
    except (ValueError, CheckpointError) as e:
        print(f"minimoe train: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"training {cfg.name} with its experts on {args.expert_parallel} processes ...", flush=True)
    if start:
        print(f"resuming {out} from step {start}", flush=True)
    try:
        result = launch(train_worker, args.expert_parallel,
                        (cfg.name, args.steps, args.batch_size, args.seed, args.lr, args.samples, str(out),
                         args.dispatch, args.warmup, args.checkpoint_every), timeout_s=300)[0]
    except DistributedError as e:
        print(f"minimoe train: {e}", file=sys.stderr)
        return 1
    if result["losses"]:
        print(f"step {result['start'] + len(result['losses'])}: loss {result['losses'][-1]:.4f}")
    print(f"wrote {out / 'checkpoint.pt'}, {out / 'metrics.jsonl'}")
    return 0


def _checkpoint_path(text: str) -> Path:
    """A run folder or checkpoint file as given, else the shipped checkpoint of a baked model's name."""
    from minimoe.course import BAKED, baked_path, shipped_baked

    if Path(text).exists():
        return Path(text)
    if text in BAKED:
        return baked_path(text)  # ValueError for a run shipped without its weights
    raise ValueError(f"checkpoint: no checkpoint at {text!r}, and no baked model of that name "
                     f"(baked: {', '.join(shipped_baked())})")


def _cmd_generate(args: argparse.Namespace) -> int:
    from minimoe.data import EOS, CharTokenizer
    from minimoe.generate import generate
    from minimoe.train import CheckpointError, load_model

    try:
        model, obj = load_model(_checkpoint_path(args.checkpoint))
        tok = CharTokenizer(obj["tokenizer"])
        prompt = tok.encode_prompt(args.prompt) if obj.get("data", {}).get("kind") != "text" \
            else tok.encode(args.prompt)
        room = model.cfg.max_seq_len - len(prompt)
        new = generate(model, prompt, min(args.max_new_tokens, room), temperature=args.temperature,
                       top_k=args.top_k, seed=args.seed, stop_token=EOS)
    except (CheckpointError, ValueError) as e:
        print(f"minimoe generate: {e}", file=sys.stderr)
        return 2
    ids = new[0].tolist()
    if EOS in ids:
        ids = ids[: ids.index(EOS)]
    print(args.prompt + tok.decode(ids))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from minimoe.data import CharTokenizer
    from minimoe.train import CheckpointError, load_model, read_metrics, save_checkpoint

    try:
        model, obj = load_model(args.run)
        metrics = read_metrics(Path(obj["path"]).parent)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"minimoe export: {e}", file=sys.stderr)
        return 2
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    curve = [{k: m[k] for k in ("step", "ce", "val_ce") if k in m} for m in metrics]
    path = save_checkpoint(args.out, model, None, obj["step"], None, obj.get("data"),
                           CharTokenizer(obj["tokenizer"]), weights_dtype=dtype,
                           extra={"metrics": curve, "train_config": obj.get("train_config")})
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, weights in {args.dtype})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "dispatch":
        from minimoe.dispatch.bench import main as bench_dispatch

        return bench_dispatch(args.options)
    print(f"minimoe bench: got {args.what!r}, need one of: dispatch", file=sys.stderr)
    return 2


def _cmd_profile(args: argparse.Namespace) -> int:
    from minimoe.profiler import format_comparison, profile_training_step

    try:
        prof, est = profile_training_step(args.preset, args.batch, args.seq, dtype=args.dtype,
                                          checkpointing=args.checkpointing, device=args.device,
                                          crosscheck=args.crosscheck, autocast=args.autocast)
    except (ValueError, TypeError) as e:
        print(f"minimoe profile: {e}", file=sys.stderr)
        return 2
    print(f"one training step of {args.preset}: batch {args.batch} x {args.seq} tokens, {args.dtype}, AdamW"
          f"{f', autocast to {args.autocast}' if args.autocast else ''}"
          f"{', activation checkpointing' if args.checkpointing else ''}, on {args.device}")
    print(format_comparison(prof, est))
    print()
    print(prof.table())
    if prof.allocator:
        a = prof.allocator
        print(f"allocator check ({a['source']}): {a['allocator_peak']:,} B against {a['tracked_peak']:,} B tracked "
              f"({a['relative_difference']:+.2%})")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from minimoe.experiments import run_experiment, ship

    command = "minimoe experiment " + " ".join(args.argv)
    try:
        out = args.out or f"runs/experiment-{args.name}{'-quick' if args.quick else ''}"
        run_experiment(args.name, args.quick, args.seeds, args.device, args.jobs, out, args.threads, command)
        if args.ship:
            ship(args.name, out, Path(__file__).resolve().parent / "checkpoints")
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"minimoe experiment: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_kitchen(args: argparse.Namespace) -> int:
    from minimoe.course import print_kitchen

    print_kitchen()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimoe", description="The minimoe course's command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade exercise notebooks in isolated kernels")
    g.add_argument("paths", nargs="*", metavar="PATH", help="submitted notebooks (.ipynb)")
    g.add_argument("--chapter", default=None,
                   help="the assignment: NN (such as 05) or the released notebook exercises/NN_name.ipynb "
                        "(required: the chapter never comes from a submission)")
    g.add_argument("--out", default="graded", help="folder for results.json files and summary.csv (default: graded)")
    g.add_argument("--timeout", type=_positive(float), default=600.0,
                   help="seconds for one whole submission: its cells, restarts and checks (default: 600)")
    g.add_argument("--cell-timeout", type=_positive(float), default=60.0,
                   help="seconds for one cell, and for one check's calls together (default: 60)")
    g.add_argument("--memory", type=_positive(float), default=4.0,
                   help="GB of memory for a notebook's kernel and everything it starts (default: 4)")
    g.add_argument("--student-id", default=None, metavar="REGEX",
                   help="regular expression finding the student id in a file name (group 'id' or the first group); "
                        "written to summary.csv")
    g.add_argument("--no-sandbox", action="store_true",
                   help="run kernels without the bubblewrap sandbox (macOS, or machines without namespaces); "
                        "every report records it")
    g.add_argument("--gradescope-bundle", default=None, metavar="CHAPTER",
                   help="write a Gradescope autograder.zip for CHAPTER (into --out, or --bundle-out) and stop")
    g.add_argument("--bundle-out", default=None, help="where to write autograder.zip (default: OUT/autograder.zip)")
    g.set_defaults(func=_cmd_grade)

    r = sub.add_parser("release", help="point every Colab link and install cell at one address; write exercises/")
    r.add_argument("--root", default=".", help="the course repository (default: the current folder)")
    r.add_argument("--repo", default=None, metavar="OWNER/NAME",
                   help="the GitHub repository (default: origin's, when it is on GitHub; else unchanged)")
    r.add_argument("--ref", default=None, help="the tag or commit the notebooks are released from (default: unchanged)")
    r.add_argument("--check", action="store_true",
                   help="write nothing; list what would change and every link that disagrees; fail if any")
    r.set_defaults(func=_cmd_release)

    rc = sub.add_parser("recipe", help="what a model costs to train: parameters, FLOPs, GPU-hours, dollars")
    rc.add_argument("--preset", help="count a preset (tiny, tiny-moe, small, deepseek-v3)")
    rc.add_argument("--params", type=float, help="activated parameters per token, e.g. 7e9")
    rc.add_argument("--tokens", type=float, help="training tokens, e.g. 2e12")
    rc.add_argument("--gpu", default="h100", help="h100, h800, h200, a100, l4, t4, b200 (default: h100)")
    rc.add_argument("--mfu", type=float, default=0.4, help="model-FLOPs utilization in (0, 1] (default: 0.4)")
    rc.add_argument("--price", type=float, default=2.0, help="dollars per GPU-hour (default: 2.0)")
    rc.add_argument("--gpus", type=int, default=None, help="GPUs at once, to print the wall-clock time")
    rc.add_argument("--fp8", action="store_true", help="use the GPU's fp8 peak instead of bf16")
    rc.set_defaults(func=_cmd_recipe)

    t = sub.add_parser("train", help="train a model on the chapter-02 mixture (or your own text file)")
    t.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    t.add_argument("--steps", type=_positive(int), default=1000)
    t.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl, loss.png")
    t.add_argument("--batch-size", type=_positive(int), default=16,
                   help="rows per step: packed rows of --seq-len positions (default: 16)")
    t.add_argument("--lr", type=_positive(float), default=3e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--eval-every", type=_positive(int), default=100)
    t.add_argument("--checkpoint-every", type=_positive(int), default=100)
    t.add_argument("--samples", type=_positive(int), default=50000, help="training problems drawn from the mixture")
    t.add_argument("--seq-len", type=_positive(int), default=256,
                   help="positions per row: packed samples, or a window of --data (default: 256)")
    t.add_argument("--no-pack", action="store_true",
                   help="one sample per row, padded (the slow way, for comparison)")
    t.add_argument("--dispatch", choices=("auto", "torch", "triton", "loop"), default="auto",
                   help="how MoE layers run their experts (default: auto: Triton on a recent GPU, else torch)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data", default=None, help="a plain-text file to train on instead of the mixture")
    t.add_argument("--mix", default=None, help="domain weights, e.g. add_cot=1,mul_cot=1 (default: every domain)")
    t.add_argument("--signed", type=float, default=0.0, help="fraction of training answers a teacher signs")
    t.add_argument("--signer", default="TeacherBot", help="the name the teacher signs with")
    t.add_argument("--expert-parallel", type=_positive(int), default=None, metavar="N",
                   help="shard the experts over N processes (torch.distributed: gloo on CPU, NCCL on GPUs)")
    t.set_defaults(func=_cmd_train)

    gen = sub.add_parser("generate", help="sample from a trained model")
    gen.add_argument("checkpoint", help="a run folder, a checkpoint file, or a baked model's name (tiny, cot, direct, ...)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=_positive(int), default=100)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    gen.add_argument("--top-k", type=_positive(int), default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_cmd_generate)

    ex = sub.add_parser("export", help="write a run's weights compactly, with its loss curve, for shipping")
    ex.add_argument("run", help="a run folder")
    ex.add_argument("out", help="the file to write")
    ex.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    ex.set_defaults(func=_cmd_export)

    b = sub.add_parser("bench", help="measure a piece here and now: `minimoe bench dispatch [--quick] ...`")
    b.add_argument("what", choices=("dispatch",), help="what to measure")
    b.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark (see its --help)")
    b.set_defaults(func=_cmd_bench)

    pr = sub.add_parser("profile", help="one training step's memory: predicted against measured, by category")
    pr.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    pr.add_argument("--batch", type=_positive(int), default=8)
    pr.add_argument("--seq", type=_positive(int), default=128, help="tokens per sequence (default: 128)")
    pr.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    pr.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                    help="mixed precision: compute under torch.autocast, fp32 weights and AdamW (with --dtype float32)")
    pr.add_argument("--checkpointing", action="store_true", help="activation checkpointing around each block")
    pr.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    pr.add_argument("--crosscheck", action="store_true",
                    help="also read the allocator's peak (torch.profiler on CPU, torch.cuda on GPU)")
    pr.set_defaults(func=_cmd_profile)

    xp = sub.add_parser("experiment", help="train and record every run of chapter 05's or chapter 10's experiment")
    xp.add_argument("name", choices=("ch05", "ch10"))
    xp.add_argument("--quick", action="store_true", help="tiny models, a few steps: a smoke test in seconds")
    xp.add_argument("--seeds", type=_positive(int), default=None, help="seeds per setting (default: ch05 3, ch10 1; --quick 1)")
    xp.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    xp.add_argument("--jobs", type=_positive(int), default=None,
                    help="runs at once, each in its own process (default: one per CPU core; all at once on cuda)")
    xp.add_argument("--threads", type=_positive(int), default=1, help="torch threads per run (default: 1)")
    xp.add_argument("--out", default=None, help="folder for the runs and the summary (default: runs/experiment-NAME)")
    xp.add_argument("--ship", action="store_true",
                    help="then copy the summary and the chosen weights into minimoe/checkpoints/")
    xp.set_defaults(func=_cmd_experiment)

    k = sub.add_parser("kitchen", help="print versions, the device and whether Triton is there")
    k.set_defaults(func=_cmd_kitchen)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # what follows the subcommand, for the records
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
