"""Tile configurations of the Triton dispatch kernels, and the rule that picks among them.

A compiled Triton GEMM is fast only with a tile shape and pipeline depth that suit the GPU and the
matrix shapes. ``kernels.py`` hands the candidates below to ``triton.autotune``, which times each
one the first time it meets a new (K, N, mode, dtype) and keeps the fastest. Before timing,
``prune_gemm`` / ``prune_weight_grad`` drop what cannot work:

- 16-bit inputs use ``BLOCK_K = 64`` (a 128-byte row of K per load); fp32 uses 32 (twice the bytes);
- a configuration whose pipelined tiles need more shared memory than the GPU has is dropped
  (``shared_memory_bytes``). sm80/sm90 (A100, H100) offer 163 KB / 227 KB per block, sm86/sm89
  (RTX 30xx/40xx, L4, A10) only 99 KB: when nothing fits, ``FALLBACK_GEMM`` (24 KB) remains;
- under Triton's interpreter (a CPU) one configuration is kept, the interpreter's own, so nothing
  is timed and the CPU tests stay fast: ``INTERPRETER_GEMM`` / ``INTERPRETER_WEIGHT_GRAD``.

The row tile ``BLOCK_M`` of the grouped GEMM is not tuned: the host's tile schedule
(``triton_path.schedule``) is cut for it before launch (``gemm_block_m``).

The weight gradient sums over an expert's rows, so it gets larger output tiles (up to 128 × 128)
than the grouped GEMM: fewer programs each re-reading the rows.

This module does not import Triton at its top (the package works without it); ``triton_configs``
turns the plain dictionaries into ``triton.Config`` objects when ``kernels.py`` asks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """One configuration: the tile's meta-parameters (``blocks``), warps and pipeline stages."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 3

    @property
    def kwargs(self) -> dict[str, int]:
        return dict(self.blocks)


def _tile(num_warps: int, num_stages: int, **blocks: int) -> Tile:
    return Tile(tuple(sorted(blocks.items())), num_warps, num_stages)


# The grouped GEMM: BLOCK_N output columns, BLOCK_K of the reduction per step (BLOCK_M is fixed).
GEMM_CANDIDATES: tuple[Tile, ...] = tuple(
    _tile(warps, stages, BLOCK_N=bn, BLOCK_K=bk)
    for bn, bk, warps, stages in [
        (128, 64, 8, 4), (128, 64, 4, 3), (64, 64, 4, 4), (128, 64, 8, 3), (256, 64, 8, 3), (64, 64, 4, 3),  # 16-bit
        (128, 32, 8, 3), (64, 32, 4, 4), (128, 32, 4, 2),  # fp32
    ])
FALLBACK_GEMM = _tile(4, 2, BLOCK_N=64, BLOCK_K=32)  # 24 KB in 16 bits with two B tiles: fits any sm70+
INTERPRETER_GEMM = _tile(4, 1, BLOCK_N=32, BLOCK_K=32)  # few, large programs: the interpreter pays per program

# The weight gradient: a (BLOCK_K, BLOCK_N) block of dW per program, BLOCK_M rows per step.
WEIGHT_GRAD_CANDIDATES: tuple[Tile, ...] = tuple(
    _tile(warps, stages, BLOCK_K=bk, BLOCK_N=bn, BLOCK_M=bm)
    for bk, bn, bm, warps, stages in [
        (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (64, 64, 64, 4, 4),
    ])
FALLBACK_WEIGHT_GRAD = _tile(4, 2, BLOCK_K=64, BLOCK_N=64, BLOCK_M=32)
INTERPRETER_WEIGHT_GRAD = _tile(4, 1, BLOCK_K=32, BLOCK_N=32, BLOCK_M=16)

# Opt-in shared memory per block (bytes) by compute capability, for when torch does not say.
SHARED_MEMORY_BY_CAPABILITY = {
    (7, 0): 98_304, (7, 5): 65_536, (8, 0): 166_912, (8, 6): 101_376, (8, 7): 166_912, (8, 9): 101_376,
    (9, 0): 232_448, (10, 0): 232_448, (12, 0): 101_376,
}


def interpreting() -> bool:
    """Whether Triton runs kernels through its interpreter in this process (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def gemm_block_m(interpret: bool) -> int:
    """Rows per tile of the grouped GEMM: the host's schedule is cut for it before launch."""
    return 16 if interpret else 64


def shared_memory_bytes(tile: Tile, dtype_bytes: int, block_m: int | None = None, dual_a: bool = False,
                        dual_b: bool = False, weight_grad: bool = False) -> int:
    """Shared memory the pipelined loads of one program need: ``num_stages`` copies of the A and B tiles.

    Grouped GEMM: A is (BLOCK_M, BLOCK_K), B is (BLOCK_K, BLOCK_N); ``dual_b`` (the gate and up
    projections together) loads a second B, ``dual_a`` (dx = dg·Wgᵀ + du·Wuᵀ) a second A too.
    Weight gradient: A is (BLOCK_M, BLOCK_K), B is (BLOCK_M, BLOCK_N), a second B when ``dual_b``.
    """
    k = tile.kwargs
    if weight_grad:
        m, kk, n = k["BLOCK_M"], k["BLOCK_K"], k["BLOCK_N"]
        a, b = m * kk, m * n
    else:
        if block_m is None:
            raise ValueError("block_m: the grouped GEMM's row tile is needed (it is not part of the tile)")
        m, kk, n = block_m, k["BLOCK_K"], k["BLOCK_N"]
        a, b = m * kk, kk * n
    per_stage = a * (2 if dual_a else 1) + b * (2 if dual_b else 1)
    return tile.num_stages * per_stage * dtype_bytes


def shared_memory_limit(device: torch.device | str) -> int:
    """Opt-in shared memory per block of a CUDA device, in bytes."""
    device = torch.device(device)
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if isinstance(limit, int) and limit > 0:
        return limit
    return SHARED_MEMORY_BY_CAPABILITY.get((props.major, props.minor), 101_376)


def choose(candidates: tuple[Tile, ...], fallback: Tile, dtype_bytes: int, limit: int, fits) -> list[Tile]:
    """The candidates for this dtype that fit in ``limit`` bytes of shared memory; ``[fallback]`` if none does."""
    wide_k = 64 if dtype_bytes <= 2 else 32
    kept = [t for t in candidates if t.kwargs["BLOCK_K"] <= wide_k and fits(t) <= limit]
    if dtype_bytes <= 2:  # 16 bits: the 64-wide K step, as long as one fits
        kept = [t for t in kept if t.kwargs["BLOCK_K"] == 64] or kept
    return kept or [fallback]


def gemm_tiles(dtype_bytes: int, limit: int, mode: int, block_m: int) -> list[Tile]:
    """Grouped-GEMM tiles worth timing for this dtype, shared memory ``limit`` and kernel ``mode``."""
    return choose(GEMM_CANDIDATES, FALLBACK_GEMM, dtype_bytes, limit,
                  lambda t: shared_memory_bytes(t, dtype_bytes, block_m, dual_a=mode == 3, dual_b=mode in (1, 3)))


def weight_grad_tiles(dtype_bytes: int, limit: int, dual: bool) -> list[Tile]:
    """Weight-gradient tiles worth timing for this dtype, shared memory ``limit``, one or two outputs."""
    return choose(WEIGHT_GRAD_CANDIDATES, FALLBACK_WEIGHT_GRAD, dtype_bytes, limit,
                  lambda t: shared_memory_bytes(t, dtype_bytes, dual_b=dual, weight_grad=True))


# --- what kernels.py hands triton.autotune ---------------------------------------------------------

def triton_configs(tiles) -> list:
    """``triton.Config`` objects for these tiles (imports Triton)."""
    import triton

    return [triton.Config(t.kwargs, num_warps=t.num_warps, num_stages=t.num_stages) for t in tiles]


def _same(config, tiles: list[Tile]) -> bool:
    return any(config.kwargs == t.kwargs and config.num_warps == t.num_warps and config.num_stages == t.num_stages
               for t in tiles)


def _pick(configs, tiles: list[Tile]) -> list:
    kept = [c for c in configs if _same(c, tiles)]
    return kept or triton_configs(tiles)  # the fallback or the interpreter's tile is not among the candidates


def prune_gemm(configs, named_args, **kwargs) -> list:
    """``early_config_prune`` of the grouped GEMM: one tile in the interpreter, else those that fit."""
    if interpreting():
        return triton_configs([INTERPRETER_GEMM])
    a = named_args["a_ptr"]
    block_m = kwargs.get("BLOCK_M", gemm_block_m(False))
    return _pick(configs, gemm_tiles(a.element_size(), shared_memory_limit(a.device), kwargs.get("MODE", 0), block_m))


def prune_weight_grad(configs, named_args, **kwargs) -> list:
    """``early_config_prune`` of the weight gradient: one tile in the interpreter, else those that fit."""
    if interpreting():
        return triton_configs([INTERPRETER_WEIGHT_GRAD])
    a = named_args["a_ptr"]
    return _pick(configs, weight_grad_tiles(a.element_size(), shared_memory_limit(a.device),
                                            bool(kwargs.get("DUAL", False))))
