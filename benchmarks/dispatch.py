"""Expert dispatch: each backend against the dense baseline and the lower bound, measured here and now.

    .venv/bin/python benchmarks/dispatch.py [--quick] [--threads 2] [--repeats 3] [--device cuda]
    minimoe bench dispatch [same options]

On a CPU: forward and forward+backward times of the loop, the torch path and `auto`, of the dense
baseline (every expert on every token, masked) and of the lower bound (one matmul chain with the
same activated FLOPs), printed as ratios to the lower bound from one run. On a GPU the Triton
kernels join in, with TFLOP/s on activated FLOPs and the fraction of a dense bf16 matmul.
Results worth keeping go to benchmarks/RESULTS.md. The work is in minimoe/dispatch/bench.py.
"""

import sys

from minimoe.dispatch.bench import main

if __name__ == "__main__":
    sys.exit(main())
