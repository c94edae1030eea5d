"""Memory: where the bytes go (chapter 07).

- ``MemoryProfiler``: a context manager that tracks every tensor byte on the CPU or a CUDA GPU and
  sorts it into parameters, gradients, optimizer state, activations, KV cache, temporaries and
  other; with the peak, the split at the peak, a timeline, per-module bytes, a table and a plot.
- ``estimate_memory``: the same categories predicted from a config with arithmetic.
- ``crosscheck``: the allocator's own record (``torch.profiler`` on CPU, ``torch.cuda`` stats on GPU).
- ``techniques``: fp8 storage of weights, and AdamW with its moments in bf16.
- ``step``: one training step of a preset, profiled next to its prediction (``minimoe profile``).

The profiler observes; it never owns model code.
"""

from minimoe.profiler.categories import CATEGORIES
from minimoe.profiler.crosscheck import overhead, profiler_peak
from minimoe.profiler.estimate import MemoryEstimate, estimate_memory
from minimoe.profiler.profiler import MemoryProfiler
from minimoe.profiler.report import format_table, nbytes, plot_timeline
from minimoe.profiler.step import compare, format_comparison, make_step_optimizer, profile_step, profile_training_step
from minimoe.profiler.techniques import AdamWBF16, Fp8Linear, dequantize_fp8, quantize_fp8, to_fp8_storage
from minimoe.profiler.tracker import Record, StorageTracker

__all__ = [
    "AdamWBF16", "CATEGORIES", "Fp8Linear", "MemoryEstimate", "MemoryProfiler", "Record", "StorageTracker",
    "compare", "dequantize_fp8", "estimate_memory", "format_comparison", "format_table", "make_step_optimizer",
    "nbytes", "overhead", "plot_timeline", "profile_step", "profile_training_step", "profiler_peak", "quantize_fp8",
    "to_fp8_storage",
]
