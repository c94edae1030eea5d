"""Memory: where the bytes go (chapter 07).

- ``MemoryProfiler``: a context manager that tracks every tensor byte on the CPU or a CUDA GPU and
  sorts it into parameters, gradients, optimizer state, activations, KV cache, temporaries and
  other; with the peak, the split at the peak, a timeline, per-module bytes, a table and a plot.
- ``estimate_memory``: the same categories predicted from a config with arithmetic.
- ``crosscheck``: the allocator's own record (``torch.profiler`` on CPU, ``torch.cuda`` stats on GPU).
- ``techniques``: fp8 storage of weights, and AdamW with its moments in bf16.
- ``step``: one training step of a preset, profiled next to its prediction (``minimoe profile``);
  mixed precision (autocast, fp32 master weights and Adam) or pure bf16.
- ``sharding``: bytes per GPU under ZeRO-1/2/3, expert and pipeline parallelism, predicted for any
  config and counted for a small one across real gloo processes.

Its design follows PyTorch's ``torch.distributed._tools.MemTracker`` (storages counted by category
and module from a ``TorchDispatchMode``) and CUDA's memory snapshot
(``torch.cuda.memory._record_memory_history``, viewed at https://pytorch.org/memory_viz).

The profiler observes; it never owns model code.
"""

from minimoe.profiler.categories import CATEGORIES
from minimoe.profiler.crosscheck import (block_bounds, cuda_crosscheck, overhead, peak_bounds, profiler_peak,
                                         snapshot_timeline)
from minimoe.profiler.estimate import MemoryEstimate, estimate_memory
from minimoe.profiler.profiler import MemoryProfiler
from minimoe.profiler.report import format_table, nbytes, plot_timeline
from minimoe.profiler.sharding import MIXED, V3, Precision, ShardedBytes, count_sharded, sharded_memory
from minimoe.profiler.step import compare, format_comparison, make_step_optimizer, profile_step, profile_training_step
from minimoe.profiler.techniques import AdamWBF16, Fp8Linear, dequantize_fp8, quantize_fp8, to_fp8_storage
from minimoe.profiler.tracker import Record, StorageTracker

__all__ = [
    "AdamWBF16", "CATEGORIES", "Fp8Linear", "MIXED", "MemoryEstimate", "MemoryProfiler", "Precision", "Record",
    "ShardedBytes", "StorageTracker", "V3", "block_bounds", "compare", "count_sharded", "cuda_crosscheck",
    "dequantize_fp8", "estimate_memory", "format_comparison", "format_table", "make_step_optimizer", "nbytes",
    "overhead", "peak_bounds", "plot_timeline", "profile_step", "profile_training_step", "profiler_peak", "quantize_fp8",
    "sharded_memory", "snapshot_timeline", "to_fp8_storage",
]
