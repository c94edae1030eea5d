"""The course's kitchen: set up a reproducible session, pick the device, and know the chapters.

Every notebook starts with ``minimoe.course.setup()``: it seeds every random number generator,
fixes the CPU thread count and asks for deterministic algorithms, so that a notebook's stored
outputs come out the same on every run. ``CHAPTERS`` is the one list of chapters that the
README's course map, the Colab links and chapter 00's tour are made from.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

import minimoe

# Where the course is published. `minimoe release --repo OWNER/NAME --ref REF` (or `make release`)
# writes these two lines, every Colab badge and every notebook's install cell; never edit them by hand.
GITHUB_REPO = "minimoe-course/minimoe"
"""The GitHub repository (``OWNER/NAME``) the Colab links and the Colab install cell point at."""
GITHUB_REF = "v0.1.0"
"""The tag (or commit) the notebooks are released from: Colab opens them there and installs it."""


@dataclass(frozen=True)
class Chapter:
    """One chapter: a lecture notebook, an exercise notebook, a package module and checks."""

    number: str  # "00"
    slug: str  # "setup_and_tour"
    title: str
    teaches: str
    module: str

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.number}_{self.slug}.ipynb"

    @property
    def exercise(self) -> str:
        return f"exercises/{self.number}_{self.slug}.ipynb"

    @property
    def solution(self) -> str:
        return f"solutions/{self.number}_{self.slug}.ipynb"

    def colab_url(self, path: str | None = None, repo: str | None = None, ref: str | None = None) -> str:
        """The "Open in Colab" address of this chapter's lecture (or of ``path``) at the release."""
        return colab_url(path or self.notebook, repo, ref)


def colab_url(path: str, repo: str | None = None, ref: str | None = None) -> str:
    """The address that opens ``path`` (relative to the repository) in Colab, at ``repo``'s ``ref``."""
    return f"https://colab.research.google.com/github/{repo or GITHUB_REPO}/blob/{ref or GITHUB_REF}/{path}"


COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("00", "setup_and_tour", "Setup and tour",
            "what we will bake; check the kitchen (device, versions); how exercises are checked",
            "minimoe.course"),
    Chapter("01", "the_recipe", "The recipe",
            "FLOPs ≈ 6·N·D, GPU-hours and dollars; DeepSeek-V3's 2.788M GPU-hours; Chinchilla",
            "minimoe.recipe"),
    Chapter("02", "the_batter", "The batter",
            "tokens, a tokenizer, synthetic data and chain-of-thought examples",
            "minimoe.data"),
    Chapter("03", "the_pan_dense", "The pan, dense",
            "a decoder-only transformer, training with a progress bar, sampling",
            "minimoe.model, minimoe.train, minimoe.generate"),
    Chapter("04", "experts_and_the_router", "Experts and the router",
            "experts, top-k routing, gate weights, the naive dispatch loop",
            "minimoe.moe"),
    Chapter("05", "keeping_experts_busy", "Keeping experts busy",
            "load balancing, capacity; dense against MoE at equal activated FLOPs, with seeds and an ablation",
            "minimoe.moe, minimoe.experiments"),
    Chapter("06", "the_oven_dispatch_kernel", "The oven: an expert-dispatch kernel",
            "sort/permute, grouped matmul, combine; a Triton kernel with autograd",
            "minimoe.dispatch"),
    Chapter("07", "memory", "Memory: where the bytes go",
            "a memory profiler; what each memory technique buys, measured",
            "minimoe.profiler"),
    Chapter("08", "latent_attention", "Latent attention and the KV cache",
            "MHA vs GQA vs MLA; KV bytes per token",
            "minimoe.model"),
    Chapter("09", "mapreduce_for_experts", "MapReduce for experts",
            "expert parallelism with all-to-all on torch.distributed",
            "minimoe.parallel"),
    Chapter("10", "thinking_costs_tokens", "Thinking costs tokens",
            "chain of thought against direct answers at equal budgets; majority votes; the decoding roofline",
            "minimoe.generate, minimoe.recipe, minimoe.experiments"),
)


def chapter(number: str | int) -> Chapter:
    """The chapter with this number (``"03"`` or ``3``)."""
    key = f"{int(number):02d}" if isinstance(number, int) or str(number).isdigit() else None
    for ch in CHAPTERS:
        if ch.number == key:
            return ch
    raise ValueError(f"chapter: got {number!r}, need one of {[c.number for c in CHAPTERS]}")


def syllabus() -> str:
    """The chapters as a Markdown table: number, title, what it teaches, the package module."""
    lines = ["| # | chapter | what it teaches | package |", "|---|---|---|---|"]
    lines += [f"| {c.number} | {c.title} | {c.teaches} | `{c.module}` |" for c in CHAPTERS]
    return "\n".join(lines)


def course_map(root: str | os.PathLike | None = None, link_prefix: str = "",
               repo: str | None = None, ref: str | None = None) -> str:
    """The README's course map as a Markdown table; chapters not written yet say "planned".

    ``root`` is the repository's folder (to see which notebooks exist); ``link_prefix`` is put in
    front of every relative link (``"../"`` for a table shown inside ``notebooks/``); the Colab links
    point at ``repo`` and ``ref`` (default: ``GITHUB_REPO`` and ``GITHUB_REF``).
    """
    root = os.fspath(root) if root is not None else None

    def exists(path: str) -> bool:
        return root is not None and os.path.exists(os.path.join(root, path))

    badge = f"[![Open in Colab]({COLAB_BADGE})]"
    lines = [
        "| # | chapter | what it teaches | lecture | exercise | Colab |",
        "|---|---|---|---|---|---|",
    ]
    for ch in CHAPTERS:
        if exists(ch.notebook):
            lecture = f"[{ch.number}_{ch.slug}]({link_prefix}{ch.notebook})"
            colab = f"{badge}({ch.colab_url(repo=repo, ref=ref)})"
        else:
            lecture, colab = "planned", ""
        exercise = f"[{ch.number}_{ch.slug}]({link_prefix}{ch.exercise})" if exists(ch.exercise) else "planned"
        lines.append(f"| {ch.number} | {ch.title} | {ch.teaches} | {lecture} | {exercise} | {colab} |")
    return "\n".join(lines)


# --- the device --------------------------------------------------------------------------------

def device() -> torch.device:
    """The best device here: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def preferred_dtype(dev: torch.device | str | None = None) -> torch.dtype:
    """The dtype to compute in on ``dev``: bf16 where the GPU has it, fp16 on older GPUs, else fp32.

    A T4 (compute capability 7.5) has no bf16 units, so it gets fp16; the CPU gets fp32, which is
    what the course's small models train in.
    """
    dev = torch.device(dev) if dev is not None else device()
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def triton_available() -> bool:
    """Whether Triton can be imported here (it exists on Linux only)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def on_colab() -> bool:
    """Whether this Python runs inside Google Colab."""
    return "google.colab" in sys.modules


# --- one call at the top of every notebook -----------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device included)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: got {type(seed).__name__}, need an int")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(seed: int = 0, threads: int = 1, deterministic: bool = True, verbose: bool = True) -> torch.device:
    """Make this session reproducible and return the device to use.

    - seeds Python, NumPy and torch with ``seed``;
    - fixes torch's CPU thread count to ``threads`` (float sums depend on how work is split; one
      thread also keeps a busy machine, such as a test run, from stalling on threads waiting for each other);
    - asks torch for deterministic algorithms (``deterministic=True``);
    - prints one line naming the device, so a reader sees where the cells run.
    """
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads: got {threads!r}, need an int >= 1")
    seed_everything(seed)
    torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
    dev = device()
    if verbose:
        print(f"minimoe ready: device {describe_device(dev)}, seed {seed}, {threads} CPU threads")
    return dev


def describe_device(dev: torch.device | str | None = None) -> str:
    """A short description of a device: ``cpu``, or ``cuda (Tesla T4, sm 7.5, computes in float16)``."""
    dev = torch.device(dev) if dev is not None else device()
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        dtype = str(preferred_dtype(dev)).replace("torch.", "")
        return f"cuda ({name}, sm {major}.{minor}, computes in {dtype})"
    return dev.type


def kitchen() -> dict[str, str | bool | None]:
    """What this machine brings to the course: versions, device, whether Triton is there."""
    info: dict[str, str | bool | None] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "minimoe": minimoe.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": describe_device(),
        "preferred dtype": str(preferred_dtype()).replace("torch.", ""),
        "cuda": torch.version.cuda,
        "triton": None,
        "colab": on_colab(),
    }
    if triton_available():
        import triton

        info["triton"] = triton.__version__
    return info


def print_kitchen() -> None:
    """Print ``kitchen()`` as a two-column table."""
    info = kitchen()
    width = max(len(k) for k in info)
    for key, value in info.items():
        shown = "not installed" if value is None and key in ("triton", "cuda") else value
        print(f"{key:<{width}}  {shown}")


BAKED = {
    "tiny": "the dense baseline of chapter 03 (preset tiny, trained on the chapter-02 mixture)",
    # Chapter 05's experiment: the same data, steps and schedule (tools/bake_moe.py, 200 steps).
    "dense-200": "chapter 05's dense baseline: preset tiny, 200 steps",
    "moe-none": "chapter 05: preset tiny-moe (16 experts, top-3 + 1 shared), no balancing, 200 steps",
    "moe-aux": "chapter 05: preset tiny-moe-aux, the Switch aux loss (0.01), 200 steps",
    "moe-v3": "chapter 05: preset tiny-moe-v3, DeepSeek-V3's sigmoid gate and aux-loss-free bias, 200 steps",
    # `minimoe experiment ch05` and `ch10`: their records are minimoe/checkpoints/experiment-ch05|ch10.json.
    "ch05-moe": "chapter 05's experiment: one MoE run (width 64), for re-checking its routing and ablation",
    "cot": "chapter 10: width 64, trained on chain-of-thought addition and multiplication",
    "direct": "chapter 10: width 64, trained on direct addition and multiplication (equal supervised tokens)",
}


def _checkpoint_file(name: str):
    from pathlib import Path

    return Path(minimoe.__file__).resolve().parent / "checkpoints" / f"{name}.pt"


def shipped_baked() -> list[str]:
    """The baked models shipped with their weights (the others ship only their training record)."""
    return [name for name in BAKED if _checkpoint_file(name).is_file()]


def baked_path(name: str):
    """The shipped checkpoint file of the baked model ``name`` (a ``pathlib.Path`` inside the package)."""
    if name not in BAKED:
        raise ValueError(f"name: got {name!r}, need one of {', '.join(BAKED)}")
    if not _checkpoint_file(name).is_file():
        raise ValueError(f"name: only the training record of {name!r} is shipped, not its weights; "
                         f"use training_run({name!r}), or one of {', '.join(shipped_baked())}")
    return _checkpoint_file(name)


def baked(name: str = "tiny"):
    """One we baked earlier: a model trained once by the command in minimoe/checkpoints/README.md.

    Returns ``(model, info)``: the model in float32, in eval mode, and the checkpoint's contents
    (its training curve is ``info["extra"]["metrics"]``).
    """
    from minimoe.train import load_model

    model, info = load_model(baked_path(name))
    return model.eval(), info


def training_run(name: str):
    """The config and training record (``info["extra"]``: curves, load history) of a baked run.

    Works for runs shipped with their weights (see ``baked``) and for runs whose weights no notebook
    needs, of which only the record is shipped (``minimoe/checkpoints/runs.json``).
    """
    import json
    from dataclasses import fields
    from importlib import resources

    from minimoe.config import ModelConfig

    folder = resources.files("minimoe") / "checkpoints"
    records = folder / "runs.json"
    if records.is_file():
        def int_keys(obj):  # JSON made the integer keys (layer numbers) strings; make them ints again
            if isinstance(obj, dict):
                return {int(k) if isinstance(k, str) and k.isdigit() else k: int_keys(v) for k, v in obj.items()}
            return [int_keys(v) for v in obj] if isinstance(obj, list) else obj

        runs = int_keys(json.loads(records.read_text()))
        if name in runs:
            info = runs[name]
            known = {f.name for f in fields(ModelConfig)}
            return ModelConfig(**{k: v for k, v in info["model_config"].items() if k in known}), info
    model, info = baked(name)
    return model.cfg, info


def colab_install_source(repo: str | None = None, ref: str | None = None) -> str:
    """The first code cell of every notebook: on Colab, install the release this notebook belongs to.

    It installs the package alone (no extras): Colab already has torch, matplotlib and ipywidgets,
    and pip leaves a requirement that is already met alone, so neither torch nor JupyterLab is
    touched. Outside Colab it does nothing.
    """
    return (
        "# On Colab, install the minimoe release this notebook belongs to (Colab already has torch).\n"
        "import subprocess, sys\n"
        "try:\n"
        "    import google.colab  # noqa: F401  (importable only on Colab)\n"
        "    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',\n"
        f"                    '{install_requirement(repo, ref)}'], check=True)\n"
        "except ImportError:\n"
        "    pass  # your own machine: `make lab` installed minimoe"
    )


def install_requirement(repo: str | None = None, ref: str | None = None) -> str:
    """What pip installs on Colab: the package (no extras) from ``repo`` at ``ref``."""
    return f"minimoe @ git+https://github.com/{repo or GITHUB_REPO}@{ref or GITHUB_REF}"
