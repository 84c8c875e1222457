"""What distilling a text drafter costs per token on this machine (why the text drafter trains on a GPU).

Times, on one batch of held-out-sized windows (batch x context random token ids), the shipped target's
forward (the teacher's share of every distillation step) and one full distillation step (drafter forward,
KL against given teacher log-probabilities, backward, AdamW update) for each drafter shape that
``mmspec.text.recipe distill`` tries. Median of ``--repeats`` after one warm-up.

    python benchmarks/text_train_cost.py [--device cuda] [--json benchmarks/results/text_train_cost_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from mmspec.bench import environment
from mmspec.loop import synchronizer
from mmspec.text import recipe
from mmspec.text.target import resolve


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times, sync = [], synchronizer(device)
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=recipe.DRAFT_VARIANTS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    target = LlamaForCausalLM.from_pretrained(resolve("zoo:code-target"), dtype=torch.float32).to(device).eval()
    cfg = target.config
    meta = {"vocab_size": cfg.vocab_size, "eot_id": cfg.bos_token_id, "pad_id": cfg.pad_token_id}
    x = torch.randint(2, cfg.vocab_size, (args.batch, args.context), device=device)     # [B, T]
    tokens = x.numel()
    # 1. The teacher's forward.
    with torch.no_grad():
        t_logp = F.log_softmax(target(input_ids=x, use_cache=False).logits.float(), -1)  # [B, T, V]
        teacher_s = timed(lambda: target(input_ids=x, use_cache=False), device, args.repeats)
    result = {"environment": environment(), "device": str(device), "batch": args.batch, "context": args.context,
              "target_forward_tokens_per_s": round(tokens / teacher_s), "drafter_step_tokens_per_s": {}}
    print(f"target forward: {tokens / teacher_s:,.0f} tokens/s")
    # 2. One distillation step per drafter shape (teacher log-probabilities given).
    for v in recipe.parse_variants(args.variants):
        draft = LlamaForCausalLM(recipe.llama_config(v["dims"], meta)).to(device)
        opt = torch.optim.AdamW(draft.parameters(), lr=1e-3)

        def step():
            d_logp = F.log_softmax(draft(input_ids=x, use_cache=False).logits.float(), -1)
            loss = F.kl_div(d_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True, reduction="batchmean")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        draft_s = timed(step, device, args.repeats)
        params = sum(p.numel() for p in draft.parameters())
        both = tokens / (teacher_s + draft_s)
        result["drafter_step_tokens_per_s"][v["name"]] = {"params": params, "step": round(tokens / draft_s),
                                                          "with_teacher": round(both)}
        print(f"{v['name']:>10} ({params / 1e6:.2f}M): step {tokens / draft_s:,.0f} tokens/s, "
              f"with the teacher's forward {both:,.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
