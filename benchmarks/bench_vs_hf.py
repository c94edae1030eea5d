"""minimoe against Hugging Face transformers: the same Mixtral-style model, same CPU, same run.

    .venv/bin/pip install -e ".[bench]"          # transformers: a benchmark extra, never a course dependency
    .venv/bin/python benchmarks/bench_vs_hf.py   # training step and greedy decoding, 1 thread

The model: d_model 128, 4 layers, 4 heads, 8 experts of hidden 352, top-2 (softmax, renormalized,
as Mixtral routes), vocabulary 100, no shared expert. minimoe's weights are copied into HF's
``MixtralForCausalLM`` and the script first checks that both give the same logits, so the two
sides compute the same function. Then, in one run, alternating the two sides:

- a training step (forward, backward, AdamW) on a batch of 32 x 128 tokens (full rows: no PAD);
- greedy decoding with the cache, batch 1, a 32-token prompt and 200 new tokens (HF ``generate``
  with ``do_sample=False``; minimoe ``generate(temperature=0)``), checking both emit the same tokens.

Prints medians and the ratio minimoe / HF (below 1: minimoe is faster). With one thread the clock
is the process's CPU time (``time.process_time``), which a busy shared machine distorts far less
than wall-clock time (``--wall`` for wall-clock); the ratio of two medians measured side by side,
alternating, in one run is what to quote.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def build_pair(seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    from minimoe.config import ModelConfig
    from minimoe.model import build_model

    cfg = ModelConfig(name="mixtral-tiny", vocab_size=100, d_model=128, n_layers=4, n_heads=4, ffn_hidden=352,
                      n_routed_experts=8, top_k=2, expert_hidden=352, router="softmax", router_renormalize=True,
                      max_seq_len=512)
    ours = build_model(cfg, seed=seed)
    hf_cfg = MixtralConfig(vocab_size=100, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
                           max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
                           tie_word_embeddings=False, router_aux_loss_coef=0.0, output_router_logits=False,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = MixtralForCausalLM(hf_cfg)
    with torch.no_grad():  # an untrained model's logits are nearly flat, and then float noise picks the
        ours.head.weight.mul_(50)  # greedy token; a sharper head makes "same tokens" a meaningful check
    copy_weights(ours, hf)
    return ours, hf


@torch.no_grad()
def copy_weights(ours, hf) -> None:
    """minimoe's weights into HF's Mixtral (nn.Linear stores (out, in); our experts store (in, out))."""
    m = hf.model
    m.embed_tokens.weight.copy_(ours.embed.weight)
    hf.lm_head.weight.copy_(ours.head.weight)
    m.norm.weight.copy_(ours.norm.weight)
    for block, layer in zip(ours.blocks, m.layers):
        layer.input_layernorm.weight.copy_(block.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.ffn_norm.weight)
        for a, b in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")):
            getattr(layer.self_attn, a).weight.copy_(getattr(block.attn, b).weight)
        moe = block.ffn
        layer.mlp.gate.weight.copy_(moe.router.weight)
        gate, up, down = (moe.experts.w_gate.weight, moe.experts.w_up.weight, moe.experts.w_down.weight)
        layer.mlp.experts.gate_up_proj.copy_(torch.cat([gate, up], dim=2).transpose(1, 2))  # (E, 2h, d)
        layer.mlp.experts.down_proj.copy_(down.transpose(1, 2))  # (E, d, h)


CLOCK = time.process_time  # CPU seconds of this process: on a shared machine, what the work itself cost


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--wall", action="store_true", help="time wall-clock instead of this process's CPU time")
    args = ap.parse_args(argv)
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    torch.set_num_threads(args.threads)
    import transformers

    from minimoe.generate import generate
    from minimoe.train import TrainConfig, make_optimizer

    ours, hf = build_pair()
    tokens = torch.randint(4, 100, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    ours.eval(), hf.eval()
    with torch.no_grad():
        gap = (ours(tokens[:2]).logits - hf(tokens[:2]).logits).abs().max().item()
    assert gap < 1e-4, f"the two models differ (max logit gap {gap:.2e}): the comparison would be unfair"
    print(f"torch {torch.__version__}, transformers {transformers.__version__} "
          f"(experts: {getattr(hf.config, '_experts_implementation', 'eager')}), {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}; same logits (max gap {gap:.1e}); "
          f"timing {'wall-clock' if args.wall else 'CPU'} time")

    # --- a training step ---
    ours.train(), hf.train()
    tcfg = TrainConfig(steps=10**6)
    opt_ours, opt_hf = make_optimizer(ours, tcfg), make_optimizer(hf, tcfg)
    targets = tokens.roll(-1, dims=1)

    def step_ours():
        out = ours(tokens, targets=targets)
        opt_ours.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_ours.step()

    def step_hf():
        logits = hf(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()

    t_ours, t_hf = [], []
    for _ in range(args.repeats):  # alternate, so both sides see the same machine load
        t_ours.append(median_time(step_ours, 1, warmup=1 if not t_ours else 0))
        t_hf.append(median_time(step_hf, 1, warmup=1 if not t_hf else 0))
    train_ours, train_hf = statistics.median(t_ours), statistics.median(t_hf)
    print(f"training step {args.batch}x{args.seq}: minimoe {train_ours * 1e3:.0f} ms, HF {train_hf * 1e3:.0f} ms, "
          f"ratio {train_ours / train_hf:.2f}x HF's time")

    # --- greedy decoding with the cache ---
    ours.eval(), hf.eval()
    prompt = tokens[:1, : args.prompt]
    with torch.no_grad():
        def decode_ours():
            return generate(ours, prompt, args.new, temperature=0)

        def decode_hf():
            return hf.generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                               use_cache=True, eos_token_id=None, pad_token_id=0)[:, args.prompt:]

        same = torch.equal(decode_ours(), decode_hf())
        d_ours, d_hf = [], []
        for _ in range(max(3, args.repeats // 2)):
            d_ours.append(median_time(decode_ours, 1, warmup=0))
            d_hf.append(median_time(decode_hf, 1, warmup=0))
    dec_ours, dec_hf = statistics.median(d_ours), statistics.median(d_hf)
    print(f"greedy decoding, batch 1, {args.prompt}+{args.new} tokens: minimoe {dec_ours * 1e3:.0f} ms "
          f"({args.new / dec_ours:.0f} tok/s), HF {dec_hf * 1e3:.0f} ms ({args.new / dec_hf:.0f} tok/s), "
          f"ratio {dec_ours / dec_hf:.2f}x HF's time; same tokens: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
