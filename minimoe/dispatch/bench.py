"""Time the dispatch backends against two yardsticks, in one run on this machine.

- the *lower bound*: one matmul chain with the same activated FLOPs (N·k rows through ONE
  expert's SwiGLU, no routing, no gather, no combine): what a perfect dispatch would cost;
- the *dense baseline*: every expert runs on every token and the combine masks out the experts
  a token did not choose (E/k times the FLOPs, but no routing at all).

Every time is reported as a ratio to the lower bound measured in the same run, so the numbers
compare across machines. ``minimoe bench dispatch`` and ``benchmarks/dispatch.py`` call ``main``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minimoe.dispatch.backends import choose_backend, expert_ffn, triton_importable


@dataclass(frozen=True)
class Case:
    name: str
    tokens: int
    d: int
    h: int
    experts: int
    k: int
    routing: str = "uniform"  # or "skewed": a quarter of the experts get most tokens

    @property
    def active_flops(self) -> float:
        """Forward FLOPs of the activated experts: three matmuls of 2·d·h per (token, expert)."""
        return 6.0 * self.tokens * self.k * self.d * self.h


CPU_GRID = (
    Case("coarse: 8 experts, top-2", 2048, 256, 512, 8, 2),
    Case("fine-grained: 64 experts, top-6", 2048, 256, 128, 64, 6),
    Case("fine-grained, skewed routing", 2048, 256, 128, 64, 6, "skewed"),
    Case("wider: 16 experts, top-4", 1024, 512, 256, 16, 4),
)
QUICK_GRID = (
    Case("coarse: 8 experts, top-2", 256, 64, 128, 8, 2),
    Case("fine-grained: 64 experts, top-6", 256, 64, 32, 64, 6),
)
GPU_GRID = (
    Case("coarse: 8 experts, top-2", 16384, 2048, 4096, 8, 2),
    Case("fine-grained: 64 experts, top-6", 16384, 2048, 1024, 64, 6),
    Case("fine-grained, skewed routing", 16384, 2048, 1024, 64, 6, "skewed"),
    Case("DeepSeek-V3-like: 256 experts, top-8", 8192, 7168, 2048, 256, 8),
)


def make_inputs(case: Case, device="cpu", dtype=torch.float32, seed: int = 0):
    """x, topk_idx, topk_weight, w_gate, w_up, w_down for one case (the float ones require grad)."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(case.tokens, case.experts, generator=gen)
    if case.routing == "skewed":
        scores[:, : max(1, case.experts // 4)] += 2.0  # a quarter of the experts are popular
    topk = scores.softmax(-1).topk(case.k, dim=-1)
    weight = topk.values / topk.values.sum(-1, keepdim=True)
    e, d, h = case.experts, case.d, case.h
    tensors = [torch.randn(case.tokens, d, generator=gen), topk.indices, weight,
               torch.randn(e, d, h, generator=gen) / d**0.5, torch.randn(e, d, h, generator=gen) / d**0.5,
               torch.randn(e, h, d, generator=gen) / h**0.5]
    out = []
    for i, t in enumerate(tensors):
        t = t.to(device)
        if i != 1:
            t = t.to(dtype if i != 2 else torch.float32).requires_grad_()
        out.append(t)
    return out


def lower_bound(x, topk_idx, topk_weight, w_gate, w_up, w_down):
    """The same activated FLOPs as one plain chain: N·k rows through expert 0, nothing else."""
    rows = x.repeat_interleave(topk_idx.shape[1], dim=0)  # (N·k, d) a copy, as any dispatch makes
    return (F.silu(rows @ w_gate[0]) * (rows @ w_up[0])) @ w_down[0]  # (N·k, d)


def dense_masked(x, topk_idx, topk_weight, w_gate, w_up, w_down):
    """Every expert on every token, then the combine weights zero the experts not chosen."""
    gates = torch.zeros(x.shape[0], w_gate.shape[0], dtype=torch.float32, device=x.device)
    gates = gates.scatter(1, topk_idx, topk_weight.float())  # (N, E), zero where not routed
    xe = x.unsqueeze(0).expand(w_gate.shape[0], -1, -1)  # (E, N, d)
    y = torch.bmm(F.silu(torch.bmm(xe, w_gate)) * torch.bmm(xe, w_up), w_down)  # (E, N, d)
    return torch.einsum("end,ne->nd", y.float(), gates).to(x.dtype)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward(fn, inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)
    return run


def _forward_backward(fn, inputs):
    leaves = [t for t in inputs if t.requires_grad]

    def run():
        out = fn(*inputs)
        torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)
    return run


def contenders(device, dtype) -> dict:
    """name -> function with expert_ffn's arguments. The two yardsticks come last."""
    names = ["loop", "torch", "auto"]
    if torch.device(device).type == "cuda" and triton_importable():
        names.insert(2, "triton")
    found = {name: (lambda *a, b=name: expert_ffn(*a, backend=b)) for name in names}
    found["dense (all experts, masked)"] = dense_masked
    found["lower bound"] = lower_bound
    return found


def run(grid=CPU_GRID, device="cpu", dtype=torch.float32, repeats: int = 3, skip_dense_over: float = 16.0,
        progress: bool = False) -> list[dict]:
    """Time every contender on every case. Returns rows: case, contender, seconds, ratios.

    The dense baseline is skipped (NaN) when it would do more than ``skip_dense_over`` times the
    activated FLOPs (E/k), so a fine-grained case does not spend minutes on it.
    """
    rows = []
    for case in grid:
        inputs = make_inputs(case, device, dtype)
        # the lower bound gets one expert's weights of its own (so its backward touches only those)
        one = inputs[:3] + [w[:1].detach().clone().requires_grad_() for w in inputs[3:]]
        for name, fn in contenders(device, dtype).items():
            if name.startswith("dense") and case.experts / case.k > skip_dense_over:
                fwd = fwd_bwd = float("nan")
            else:
                args = one if name == "lower bound" else inputs
                fwd = time_call(_forward(fn, args), device, repeats)
                fwd_bwd = time_call(_forward_backward(fn, args), device, repeats)
            rows.append(dict(case=case.name, backend=name, forward_s=fwd, forward_backward_s=fwd_bwd,
                             tflops_forward=case.active_flops / fwd / 1e12,
                             tflops_forward_backward=3 * case.active_flops / fwd_bwd / 1e12))
            if progress:
                print(f"  {case.name:<36} {name:<28} fwd {fwd * 1e3:8.2f} ms  fwd+bwd {fwd_bwd * 1e3:8.2f} ms",
                      flush=True)
        bound = [r for r in rows if r["case"] == case.name and r["backend"] == "lower bound"][0]
        for r in rows:
            if r["case"] == case.name:
                r["forward_ratio"] = r["forward_s"] / bound["forward_s"]
                r["forward_backward_ratio"] = r["forward_backward_s"] / bound["forward_backward_s"]
    return rows


def dense_matmul_tflops(device, dtype=torch.bfloat16, n: int = 8192, repeats: int = 5) -> float:
    """Throughput of one large square matmul: the ceiling the dispatch is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / time_call(lambda: a @ b, device, repeats, warmup=2) / 1e12


def format_table(rows: list[dict], gpu: bool = False) -> str:
    """A Markdown table: times as ratios to the lower bound (and TFLOP/s on a GPU)."""
    head = "| case | backend | forward (× lower bound) | forward+backward (× lower bound) |"
    sep = "|---|---|---|---|"
    if gpu:
        head += " TFLOP/s fwd | TFLOP/s fwd+bwd |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        line = f"| {r['case']} | {r['backend']} | {r['forward_ratio']:.2f} | {r['forward_backward_ratio']:.2f} |"
        if gpu:
            line += f" {r['tflops_forward']:.1f} | {r['tflops_forward_backward']:.1f} |"
        lines.append(line.replace("| nan |", "| skipped |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="minimoe bench dispatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="default: float32 on a CPU, bfloat16 on a GPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a tiny grid, for a smoke test")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = QUICK_GRID if args.quick else (GPU_GRID if gpu else CPU_GRID)
    print(f"dispatch benchmark on {device} ({dtype}, {torch.get_num_threads()} CPU threads), "
          f"auto picks {choose_backend(device, dtype)!r}; median of {args.repeats}")
    rows = run(grid, device, dtype, args.repeats, progress=True)
    print()
    print(format_table(rows, gpu))
    if gpu:
        peak = dense_matmul_tflops(device)
        print(f"\ndense bf16 matmul (8192³): {peak:.1f} TFLOP/s; fraction of it, forward+backward:")
        for r in rows:
            print(f"  {r['case']:<40} {r['backend']:<28} {r['tflops_forward_backward'] / peak:.2f}")
    return 0
