"""The categories every tracked byte belongs to, and which label wins when several apply.

A storage can be reached in several ways at once: a weight is a parameter and is also saved for
backward by the linear layer that reads it; a gradient starts life as the output of a backward
op. Each storage gets the label of highest priority that ever applied to it (the order below),
and keeps it for its whole life: the split at the peak is computed with these final labels.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "parameters",  # the model's parameters (trainable or not; buffers count as "other")
    "gradients",  # .grad of a parameter
    "optimizer",  # what the optimizer keeps between steps (Adam: two moments and a step counter)
    "kv_cache",  # keys and values kept for generation
    "activations",  # tensors the autograd graph holds for backward (saved or recomputed)
    "temporaries",  # made and freed inside the profiled region, held by nothing else
    "other",  # made inside the region, unlabelled and still alive at the end (outputs, losses)
)

PRIORITY = {name: i for i, name in enumerate(CATEGORIES)}  # lower number wins


def check_category(category: str) -> str:
    if category not in PRIORITY:
        raise ValueError(f"category: got {category!r}, need one of {', '.join(CATEGORIES)}")
    return category


def stronger(a: str | None, b: str) -> str:
    """The label that wins between an existing label ``a`` (or none) and a new one ``b``."""
    return b if a is None or PRIORITY[b] < PRIORITY[a] else a
