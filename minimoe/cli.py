"""The ``minimoe`` command: ``minimoe grade ...``, ``minimoe release``, ``minimoe kitchen``."""

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
    from minimoe.grading.grader import GradingError, format_result, format_summary, grade_notebook, write_reports
    from minimoe.grading.kernel import Limits

    limits = Limits(timeout=args.timeout, cell_timeout=args.cell_timeout, memory_gb=args.memory)
    missing = [p for p in args.paths if not Path(p).is_file()]
    if missing:
        print(f"minimoe grade: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    results, failures = [], 0
    for i, path in enumerate(args.paths, 1):
        print(f"[{i}/{len(args.paths)}] grading {path} ...", flush=True)
        try:
            result = grade_notebook(path, limits, chapter=args.chapter)
        except GradingError as e:
            print(f"minimoe grade: {e}", file=sys.stderr)
            failures += 1
            continue
        results.append(result)
        print(format_result(result), flush=True)
    if results:
        print()
        print(format_summary(results))
        for target in write_reports(results, Path(args.out)):
            print(f"wrote {target}")
    # The exit status says whether grading ran, never what the students scored.
    return 1 if failures else 0


def _cmd_release(args: argparse.Namespace) -> int:
    from minimoe.grading.release import release

    changed = release(args.solutions, args.exercises, check_only=args.check)
    if args.check:
        for p in changed:
            print(f"out of date: {p}")
        if changed:
            print("run `make release` to write exercises/ from solutions/", file=sys.stderr)
        return 1 if changed else 0
    for p in changed:
        print(f"wrote {p}")
    print(f"{len(changed)} exercise notebook(s) changed")
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


def _cmd_kitchen(args: argparse.Namespace) -> int:
    from minimoe.course import print_kitchen

    print_kitchen()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimoe", description="The minimoe course's command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade exercise notebooks in isolated kernels")
    g.add_argument("paths", nargs="+", metavar="PATH", help="submitted notebooks (.ipynb)")
    g.add_argument("--out", default="graded", help="folder for results.json files and summary.csv (default: graded)")
    g.add_argument("--timeout", type=_positive(float), default=600.0,
                   help="seconds to run one whole notebook (default: 600)")
    g.add_argument("--cell-timeout", type=_positive(float), default=60.0,
                   help="seconds for one cell or one check's call (default: 60)")
    g.add_argument("--memory", type=_positive(float), default=4.0, help="GB of memory for a notebook's kernel (default: 4)")
    g.add_argument("--chapter", default=None, help="chapter to grade against (default: from the file name NN_*.ipynb)")
    g.set_defaults(func=_cmd_grade)

    r = sub.add_parser("release", help="write exercises/ from solutions/")
    r.add_argument("--solutions", default="solutions")
    r.add_argument("--exercises", default="exercises")
    r.add_argument("--check", action="store_true", help="write nothing; fail if exercises/ is out of date")
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

    k = sub.add_parser("kitchen", help="print versions, the device and whether Triton is there")
    k.set_defaults(func=_cmd_kitchen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
