"""Time the dispatch backends against two yardsticks, in one run on this machine.

- the *lower bound*: one matmul chain with the same activated FLOPs (N·k rows through ONE
  expert's SwiGLU, no routing, no gather, no combine): what a perfect dispatch would cost;
- the *dense baseline*: every expert runs on every token and the combine masks out the experts
  a token did not choose (E/k times the FLOPs, but no routing at all);
- the *roofline* (``minimoe.roofline``): the lower bound reads one expert's weights, a real layer
  reads every expert it routes to. ``layer_traffic`` counts the FLOPs and the least bytes any
  dispatch must move (each used expert's weights, each token in and out), and the roofline time
  is the larger of FLOPs ÷ peak and bytes ÷ bandwidth, both measured on this machine.

Every time is reported as a ratio to the lower bound measured in the same run, so the numbers
compare across machines. Cases whose tensors would not fit the device's free memory are skipped,
and say so (``fit_grid``). ``minimoe bench dispatch`` and ``benchmarks/dispatch.py`` call ``main``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minimoe.dispatch.backends import choose_backend, expert_ffn, triton_importable
from minimoe.roofline import Roofline, measure_bandwidth, measure_peak_flops, roofline


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

    @property
    def experts_used(self) -> float:
        """Experts that get at least one token, expected under uniform routing: E·(1 - (1 - k/E)^N)."""
        return self.experts * (1.0 - (1.0 - self.k / self.experts) ** self.tokens)

    @property
    def tokens_per_expert(self) -> float:
        """N·k / E: the rows each expert's weights are used for, on average."""
        return self.tokens * self.k / self.experts

    def tensor_bytes(self, dtype_bytes: int, backward: bool = True, dense: bool = False) -> int:
        """Bytes the benchmark holds at once for this case, generously: weights (and their gradients),
        the routed rows' hidden and output activations, tokens in and out; the dense baseline's
        (E, N, ·) activations when ``dense``. Used to skip what does not fit (``fit_grid``)."""
        n, d, h, e, r = self.tokens, self.d, self.h, self.experts, self.tokens * self.k
        weights = 3 * e * d * h * dtype_bytes * (2 if backward else 1)
        rows = r * (4 * h + 3 * d) * dtype_bytes + r * d * 4 * (2 if backward else 1)  # + fp32 combine
        tokens = 4 * n * d * 4  # x, out and their gradients (fp32 at worst)
        lower_bound = r * (3 * h + 2 * d) * dtype_bytes * (2 if backward else 1)
        total = weights + rows + tokens + lower_bound
        if dense:
            total += e * n * (3 * h + d) * dtype_bytes * (2 if backward else 1)
        return int(total)


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


def _random_weights(gen: torch.Generator, shape: tuple[int, int, int], scale: float, device, dtype) -> torch.Tensor:
    """(E, a, b) random weights made one expert at a time on the host (fp32) and moved: the host never
    holds more than one expert's fp32 copy (the V3-like case's weights are 22 GB in bf16, 45 GB in fp32)."""
    out = torch.empty(shape, device=device, dtype=dtype)
    for e in range(shape[0]):
        out[e].copy_(torch.randn(shape[1:], generator=gen) * scale)
    return out


def make_inputs(case: Case, device="cpu", dtype=torch.float32, seed: int = 0):
    """x, topk_idx, topk_weight, w_gate, w_up, w_down for one case (the float ones require grad)."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(case.tokens, case.experts, generator=gen)
    if case.routing == "skewed":
        scores[:, : max(1, case.experts // 4)] += 2.0  # a quarter of the experts are popular
    topk = scores.softmax(-1).topk(case.k, dim=-1)
    weight = topk.values / topk.values.sum(-1, keepdim=True)
    e, d, h = case.experts, case.d, case.h
    x = torch.randn(case.tokens, d, generator=gen).to(device=device, dtype=dtype)
    w_gate = _random_weights(gen, (e, d, h), d**-0.5, device, dtype)
    w_up = _random_weights(gen, (e, d, h), d**-0.5, device, dtype)
    w_down = _random_weights(gen, (e, h, d), h**-0.5, device, dtype)
    return [x.requires_grad_(), topk.indices.to(device), weight.to(device).requires_grad_(),
            w_gate.requires_grad_(), w_up.requires_grad_(), w_down.requires_grad_()]


def free_memory(device) -> int:
    """Bytes free on ``device`` now: ``torch.cuda.mem_get_info`` on CUDA, MemAvailable on a Linux host."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def fit_grid(grid, device="cpu", dtype=torch.float32, budget: int | None = None, fraction: float = 0.7,
             skip_dense_over: float = 16.0) -> tuple[list[Case], list[str]]:
    """Split ``grid`` into the cases that fit in ``budget`` bytes (default: ``fraction`` of the free
    memory of ``device``) and a line for each one skipped, saying what it needs and what is free."""
    if budget is None:
        budget = int(free_memory(device) * fraction)
    if not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"budget: got {budget!r}, need a positive number of bytes")
    size = torch.empty((), dtype=dtype).element_size()
    keep, skipped = [], []
    for case in grid:
        need = case.tensor_bytes(size, dense=case.experts / case.k <= skip_dense_over)
        if need <= budget:
            keep.append(case)
        else:
            skipped.append(f"skipped {case.name!r}: needs about {need / 1e9:.3g} GB, "
                           f"{budget / 1e9:.3g} GB available on {torch.device(device)}")
    return keep, skipped


def layer_traffic(case: Case, dtype_bytes: int, backward: bool = False) -> tuple[float, float]:
    """(FLOPs, bytes) of one MoE layer's routed experts: the FLOPs it must do and the least bytes
    any dispatch must move.

    Forward: 6·N·k·d·h FLOPs; bytes = each used expert's three matrices read once
    (3·E_used·d·h) plus each token read and its output written once (2·N·d), times the dtype's
    bytes. Forward + backward: 3x the FLOPs; the weights are read twice (forward, and backward for
    dX) and their gradients written once, the tokens move five times (x, out, d out, dx, x again
    for dW).
    """
    weights = 3.0 * case.experts_used * case.d * case.h * dtype_bytes
    tokens = case.tokens * case.d * dtype_bytes
    if backward:
        return 3 * case.active_flops, 3 * weights + 5 * tokens
    return case.active_flops, weights + 2 * tokens


def case_roofline(case: Case, dtype_bytes: int, peak: float, bandwidth: float, backward: bool = False) -> Roofline:
    """The roofline of one case on a machine of ``peak`` FLOP/s and ``bandwidth`` B/s."""
    flops, moved = layer_traffic(case, dtype_bytes, backward)
    return roofline(flops, moved, peak, bandwidth)


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
        progress: bool = False, machine: tuple[float, float] | None = None) -> list[dict]:
    """Time every contender on every case. Returns rows: case, contender, seconds, ratios.

    The dense baseline is skipped (NaN) when it would do more than ``skip_dense_over`` times the
    activated FLOPs (E/k), so a fine-grained case does not spend minutes on it. With ``machine``
    = (peak FLOP/s, bandwidth B/s), each case also gets a "roofline" row: the time no dispatch can
    beat on this machine (``case_roofline``), with ``bound`` saying which roof it hits.
    """
    rows = []
    size = torch.empty((), dtype=dtype).element_size()
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
            rows.append(dict(case=case.name, backend=name, forward_s=fwd, forward_backward_s=fwd_bwd))
            if progress:
                print(f"  {case.name:<36} {name:<28} fwd {fwd * 1e3:8.2f} ms  fwd+bwd {fwd_bwd * 1e3:8.2f} ms",
                      flush=True)
        del inputs, one
        if machine is not None:
            fwd_roof = case_roofline(case, size, *machine)
            both_roof = case_roofline(case, size, *machine, backward=True)
            rows.append(dict(case=case.name, backend="roofline", forward_s=fwd_roof.time_s,
                             forward_backward_s=both_roof.time_s, bound=both_roof.bound))
        bound = [r for r in rows if r["case"] == case.name and r["backend"] == "lower bound"][0]
        for r in rows:
            if r["case"] == case.name:
                r["forward_ratio"] = r["forward_s"] / bound["forward_s"]
                r["forward_backward_ratio"] = r["forward_backward_s"] / bound["forward_backward_s"]
                r["tflops_forward"] = case.active_flops / r["forward_s"] / 1e12
                r["tflops_forward_backward"] = 3 * case.active_flops / r["forward_backward_s"] / 1e12
    return rows


def dense_matmul_tflops(device, dtype=torch.bfloat16, n: int = 8192, repeats: int = 5) -> float:
    """Throughput of one large square matmul: the ceiling the dispatch is compared with."""
    return measure_peak_flops(device, dtype, n, repeats) / 1e12


def format_table(rows: list[dict], gpu: bool = False) -> str:
    """A Markdown table: times as ratios to the lower bound (and TFLOP/s on a GPU)."""
    head = "| case | backend | forward (× lower bound) | forward+backward (× lower bound) |"
    sep = "|---|---|---|---|"
    if gpu:
        head += " TFLOP/s fwd | TFLOP/s fwd+bwd |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        name = r["backend"] + (f" ({r['bound']}-bound)" if "bound" in r else "")
        line = f"| {r['case']} | {name} | {r['forward_ratio']:.2f} | {r['forward_backward_ratio']:.2f} |"
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
    grid, skipped = fit_grid(grid, device, dtype)
    for line in skipped:
        print(line)
    peak = measure_peak_flops(device, dtype)
    bandwidth = measure_bandwidth(device)
    print(f"dispatch benchmark on {device} ({dtype}, {torch.get_num_threads()} CPU threads), "
          f"auto picks {choose_backend(device, dtype)!r}; median of {args.repeats}")
    print(f"this machine: matmul {peak / 1e12:.3g} TFLOP/s, copy {bandwidth / 1e9:.3g} GB/s "
          f"(ridge point {peak / bandwidth:.3g} FLOP/B)")
    rows = run(grid, device, dtype, args.repeats, progress=True, machine=(peak, bandwidth))
    print()
    print(format_table(rows, gpu))
    if gpu:
        print(f"\nfraction of the dense {str(dtype).replace('torch.', '')} matmul ({peak / 1e12:.1f} TFLOP/s), "
              "forward+backward:")
        for r in rows:
            print(f"  {r['case']:<40} {r['backend']:<28} {r['tflops_forward_backward'] * 1e12 / peak:.2f}")
    return 0
