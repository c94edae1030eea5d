"""Looking at routing: which expert each token goes to, load per expert, domain × expert, a widget.

Data first (plain tensors), then plots on top of them, so notebooks can assert on the numbers:

- ``route_tokens(model, tokens, k=None)``: each MoE layer's chosen experts and gate weights for one
  sequence, recomputed from the layer's own router (optionally with another k, to explore);
- ``sample_tokens``: a sample's input ids and characters; ``format_routing``: routing as text;
- ``domain_expert_matrix(model, samples)``: (domains, E) share of each domain's assignments per expert;
- ``plot_load_histogram``, ``plot_domain_heatmap``, ``plot_load_curves``: matplotlib figures;
- ``routing_explorer(model, samples)``: an ipywidgets explorer (pick a sample, a layer and k).
"""

from __future__ import annotations

import torch

from minimoe.data import DOMAINS, PAD, TOKENIZER, collate
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
def domain_expert_matrix(model, samples, layer: int | None = None, batch_size: int = 64) -> torch.Tensor:
    """(len(DOMAINS), E): of each domain's (token, slot) assignments, the share each expert got.

    Every non-padding token of each sample counts, in one MoE layer (``layer``: a block index) or
    summed over all of them. Rows of domains without samples are zero.
    """
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model: has no MoE layer")
    if layer is not None and layer not in dict(layers):
        raise ValueError(f"layer: got {layer!r}, need one of the MoE blocks {[i for i, _ in layers]}")
    e = layers[0][1].cfg.n_routed_experts
    counts = torch.zeros(len(DOMAINS), e)
    was_training = model.training
    model.eval()
    for start in range(0, len(samples), batch_size):
        batch = collate(samples[start:start + batch_size], TOKENIZER)
        out = model(batch.inputs)
        real = batch.inputs != PAD  # (B, T)
        for i, aux in enumerate(out.aux):
            if "topk_idx" not in aux or (layer is not None and i != layer):
                continue
            idx = aux["topk_idx"]  # (B, T, k)
            for b in range(idx.shape[0]):
                d = int(batch.domain_ids[b])
                if d >= 0:
                    counts[d] += torch.bincount(idx[b][real[b]].reshape(-1), minlength=e).float()
    model.train(was_training)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def plot_load_histogram(load, ax=None, title: str = ""):
    """A bar per expert: its share of the assignments, with the uniform share as a line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    load = torch.as_tensor(load, dtype=torch.float32)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.5))
    ax.bar(range(len(load)), load.tolist(), label="share of assignments")
    ax.axhline(1 / len(load), color="k", ls="--", lw=1, label="uniform")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # expert ids are whole numbers
    ax.set_xlabel("expert")
    ax.set_ylabel("share of tokens")
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


def plot_load_curves(curves: dict[str, list[dict]], key: str = "ffn/max_load", ax=None, smooth: int = 20):
    """``key`` (default: busiest expert's load over the mean) against step, one line per run."""
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
    ax.set_ylabel(readable_label(key))
    ax.legend()
    return ax


# How the training record's keys read on a plot's axis.
LABELS = {
    "ffn/max_load": "busiest expert's load / mean load",
    "ffn/min_load": "idlest expert's load / mean load",
    "ffn/load_cv": "load: std / mean over experts",
    "ffn/dropped": "share of assignments dropped",
    "ffn/router_entropy": "router entropy (nats)",
    "ffn/balance_loss": "Switch balance loss (1 = uniform)",
    "ce": "cross-entropy per scored token",
    "val_ce": "validation cross-entropy",
    "aux_loss": "auxiliary (balance) loss",
    "grad_norm": "gradient norm",
    "lr": "learning rate",
}


def readable_label(key: str) -> str:
    """An axis label for a training-record key: ``"ffn/max_load"`` -> ``"busiest expert's load / mean load"``.

    Keys without an entry in ``LABELS`` lose their ``ffn/`` prefix and underscores.
    """
    return LABELS.get(key, key.removeprefix("ffn/").replace("_", " "))


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
