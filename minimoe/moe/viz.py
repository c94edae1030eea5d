"""Looking at routing: which expert each token goes to, load per expert, domain × expert, a widget.

Data first (plain tensors), then plots on top of them, so notebooks can assert on the numbers:

- ``route_tokens(model, tokens, k=None)``: each MoE layer's chosen experts and gate weights for one
  sequence, recomputed from the layer's own router (optionally with another k, to explore);
- ``sample_tokens``: a sample's input ids and characters; ``format_routing``: routing as text;
- ``expert_assignments(model, samples)``: per MoE layer, (samples, E) how many of each sample's
  real-token assignments each expert got; ``expert_load`` and ``domain_expert_matrix`` sum it up:
  every load a chapter shows of a checkpoint is computed this one way (PAD masked out);
- ``expert_load(model, samples, layer)``: (E,) share of the real-token assignments per expert;
- ``domain_expert_matrix(model, samples)``: (domains, E) share of each domain's assignments per expert;
- ``plot_load_histogram``, ``plot_domain_heatmap``, ``plot_load_curves``: matplotlib figures;
- ``routing_explorer(model, samples)``: an ipywidgets explorer (pick a sample, a layer and k).
"""

from __future__ import annotations

import torch

from minimoe.data import DOMAINS, TOKENIZER, collate
from minimoe.moe.layer import MoELayer
from minimoe.moe.router import sigmoid_router, softmax_router


def moe_layers(model) -> list[tuple[int, MoELayer]]:
    """(block index, layer) for every MoE feed-forward of a chapter-03 model."""
    return [(i, b.ffn) for i, b in enumerate(model.blocks) if isinstance(b.ffn, MoELayer)]


@torch.no_grad()
def route_tokens(model, tokens: torch.Tensor, k: int | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """tokens: (T,) ids -> {block index: (topk_idx (T, k), topk_weight (T, k))}.

    The routing is recomputed from what each MoE layer receives, with the layer's own rule, so ``k``
    can differ from the config's (to see what a token would choose with more or fewer experts).
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens: got shape {tuple(tokens.shape)}, need one sequence (T,)")
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i, layer in moe_layers(model)]
    try:
        was_training = model.training
        model.eval()
        model(tokens[None])
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i, layer in moe_layers(model):
        cfg, x = layer.cfg, inputs[i][0]  # (T, d)
        kk = cfg.top_k if k is None else k
        logits = torch.nn.functional.linear(x.float(), layer.router.weight.float())  # (T, E)
        bias = layer.router.bias if layer.router.uses_bias else None
        route = sigmoid_router if cfg.router == "sigmoid" else softmax_router
        grouped = cfg.n_expert_groups and kk <= cfg.topk_groups * cfg.n_routed_experts // cfg.n_expert_groups
        weight, idx = route(logits, kk, bias=bias, scaling=cfg.routed_scaling, renormalize=cfg.router_renormalize,
                            n_groups=cfg.n_expert_groups if grouped else 0, topk_groups=cfg.topk_groups if grouped else 0)
        out[i] = (idx, weight)
    return out


def sample_tokens(sample, tokenizer=TOKENIZER) -> tuple[torch.Tensor, str]:
    """A sample as the model reads it in training: its input ids (T,) and one character per id."""
    ids = collate([sample], tokenizer).inputs[0]  # (T,): BOS, prompt, completion
    return ids, "".join(tokenizer.vocab[i] for i in ids.tolist())


def format_routing(text: str, idx: torch.Tensor, weight: torch.Tensor) -> str:
    """One line per character: the character, then ``expert:weight`` for each of its k experts."""
    lines = []
    for ch, row_i, row_w in zip(text, idx.tolist(), weight.tolist()):
        shown = repr(ch)[1:-1] or " "
        lines.append(f"{shown:>3}  " + "  ".join(f"e{e:<2d}:{w:.2f}" for e, w in zip(row_i, row_w)))
    return "\n".join(lines)


@torch.no_grad()
def expert_assignments(model, samples, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """{block index: (len(samples), E) float}: each sample's real-token assignments per expert.

    The samples are batched as evaluation batches are (``collate``, padded) and the batch's token
    mask goes into the model, so a PAD position is routed to no expert and counts nowhere: row n,
    column e is how many of sample n's tokens chose expert e (each token chooses k experts).
    """
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model: has no MoE layer")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}, need an int >= 1")
    e = layers[0][1].cfg.n_routed_experts
    counts = {i: torch.zeros(len(samples), e) for i, _ in layers}
    # Batch samples of similar length together (less padding to compute); rows go back to their sample.
    order = sorted(range(len(samples)), key=lambda n: len(samples[n].prompt) + len(samples[n].completion))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            which = torch.tensor(order[start:start + batch_size])  # (B,) sample numbers
            batch = collate([samples[n] for n in which.tolist()], TOKENIZER)
            out = model(batch.inputs, token_mask=batch.token_mask)
            for i in counts:
                idx = out.aux[i]["topk_idx"]  # (B, T, k), -1 where the token mask is False
                real = (idx >= 0).float()  # (B, T, k)
                rows = torch.zeros(idx.shape[0], e).scatter_add_(1, idx.clamp_min(0).flatten(1), real.flatten(1))
                counts[i][which] = rows  # (B, E)
    finally:
        model.train(was_training)
    return counts


def expert_load(model, samples, layer: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """(E,): the share of the samples' real-token assignments each expert got, in one MoE layer
    (``layer``: a block index) or over all of them. Sums to 1; 1/E each when perfectly even."""
    counts = expert_assignments(model, samples, batch_size)
    if layer is not None and layer not in counts:
        raise ValueError(f"layer: got {layer!r}, need one of the MoE blocks {sorted(counts)}")
    total = sum(c.sum(0) for i, c in counts.items() if layer is None or i == layer)  # (E,)
    return total / total.sum().clamp_min(1)


def domain_expert_matrix(model, samples, layer: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """(len(DOMAINS), E): of each domain's (token, slot) assignments, the share each expert got.

    Every real (non-PAD) token of each sample counts, in one MoE layer (``layer``: a block index) or
    summed over all of them. Rows of domains without samples are zero.
    """
    counts = expert_assignments(model, samples, batch_size)
    if layer is not None and layer not in counts:
        raise ValueError(f"layer: got {layer!r}, need one of the MoE blocks {sorted(counts)}")
    per_sample = sum(c for i, c in counts.items() if layer is None or i == layer)  # (samples, E)
    names = list(DOMAINS)
    matrix = torch.zeros(len(names), per_sample.shape[1])
    for row, sample in zip(per_sample, samples):
        if sample.domain in DOMAINS:
            matrix[names.index(sample.domain)] += row
    return matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)


def plot_load_histogram(load, ax=None, title: str = ""):
    """A bar per expert: its share of the assignments, with the uniform share as a line."""
    import matplotlib.pyplot as plt

    load = torch.as_tensor(load, dtype=torch.float32)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.5))
    ax.bar(range(len(load)), load.tolist(), label="expert's share")
    ax.axhline(1 / len(load), color="k", ls="--", lw=1, label="uniform")
    ax.set_xticks(range(len(load)))  # expert ids are integers
    ax.set_xlabel("expert")
    ax.set_ylabel("share of assignments")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return ax


def plot_domain_heatmap(matrix, ax=None, title: str = "which expert handles which domain"):
    """The domain × expert matrix as an image, one row per domain."""
    import matplotlib.pyplot as plt

    matrix = torch.as_tensor(matrix, dtype=torch.float32)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.8))
    im = ax.imshow(matrix.numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(DOMAINS)), list(DOMAINS))
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_xlabel("expert")
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, label="share of the domain's tokens")
    return ax


# What each logged routing statistic is, for axis labels (``minimoe.moe.stats``).
STAT_LABELS = {
    "max_load": "busiest expert / mean load",
    "min_load": "idlest expert / mean load",
    "load_cv": "load: coefficient of variation",
    "router_entropy": "router entropy (nats)",
    "dropped": "share of assignments dropped",
    "balance_loss": "Switch balance loss E·Σ f·P",
}


def plot_load_curves(curves: dict[str, list[dict]], key: str = "ffn/max_load", ax=None, smooth: int = 20,
                     ylabel: str | None = None):
    """``key`` (default: busiest expert's load over the mean) against step, one line per run.

    ``ylabel`` defaults to a readable name of the statistic (``STAT_LABELS``), not its key."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    for name, rows in curves.items():
        pts = [(r["step"] + 1, r[key]) for r in rows if key in r]
        if not pts:
            continue
        steps, values = zip(*pts)
        v = torch.tensor(values)
        if smooth > 1 and len(v) > smooth:
            v = torch.nn.functional.avg_pool1d(v[None, None], smooth, 1)[0, 0]
            steps = steps[smooth - 1:]
        ax.plot(steps, v.tolist(), label=name)
    ax.set_xlabel("step")
    stat = key.removeprefix("ffn/")
    ax.set_ylabel(ylabel or STAT_LABELS.get(stat, stat))
    ax.legend()
    return ax


def routing_explorer(model, samples, tokenizer=TOKENIZER):
    """An ipywidgets explorer: choose a sample, an MoE layer and k; see each token's experts and weights."""
    import ipywidgets as widgets

    layers = [i for i, _ in moe_layers(model)]
    top_k = moe_layers(model)[0][1].cfg.top_k
    n_experts = moe_layers(model)[0][1].cfg.n_routed_experts
    pick = widgets.Dropdown(options=[(f"{i}: {s.domain}: {s.prompt[:30]!r}", i) for i, s in enumerate(samples)],
                            description="sample")
    layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")
    k = widgets.IntSlider(value=top_k, min=1, max=n_experts, description="k")
    out = widgets.Output()

    def show(_=None):
        tokens, text = sample_tokens(samples[pick.value], tokenizer)
        idx, weight = route_tokens(model, tokens, k.value)[layer.value]
        out.clear_output()
        with out:
            print(format_routing(text, idx, weight))

    for w in (pick, layer, k):
        w.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([pick, layer, k]), out])
