"""The same prompts through vLLM (EAGLE-1, the exported heads) and through mmspec (the same heads).

    pip install -e ".[vllm]"
    python benchmarks/engine_compare.py --heads runs/code-eagle1 --target zoo:code-target --prompts 20 --new 128

The heads (kind ``eagle1``) are exported with ``mmspec heads export --format vllm`` into --export (default
a temporary folder); vLLM runs them with ``speculative_config={"method": "eagle", ...}`` at temperature 0,
mmspec with ``load_heads`` as a chain of up to ``k`` frames, greedy. Reported side by side: tokens/s (all
prompts, one request at a time on both sides, after one warm-up prompt) and the mean acceptance length,
tokens committed per target forward after the prefill (vLLM: 1 + accepted / drafts from its
``spec_decode`` counters; mmspec: the same ratio over its steps). Greedy output is the target's on both
sides; the two drafters see different contexts (vLLM's attends over the prompt's pairs too, mmspec's window
starts at the prompt's end), so acceptance may differ a little.

Without vLLM or a GPU it says which is missing and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch


def missing() -> str:
    """Why this machine cannot run the comparison ('' when it can)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install -e \".[vllm]\")"
    if not torch.cuda.is_available():
        return "no CUDA GPU (vLLM's EAGLE runs on a GPU)"
    return ""


def run_mmspec(target_name: str, heads: str, prompts: list[str], new: int, k: int, dtype: str) -> dict:
    """mmspec greedy with the heads: tokens/s over all prompts and tokens per target forward after the prefill."""
    import mmspec
    from mmspec.heads import load_heads
    from mmspec.text import TextTarget

    target = TextTarget.from_pretrained(target_name, device="cuda", dtype=dtype)
    drafter = load_heads(heads, target)
    mmspec.generate(target, drafter, prompts[0], max_new_tokens=new, k=k)  # warm-up
    tokens = steps = committed = 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for prompt in prompts:
        gen = mmspec.generate(target, drafter, prompt, max_new_tokens=new, k=k)
        per_step = gen.stats["accepted_per_step"][1:]  # after the prefill's single frame
        tokens, steps, committed = tokens + int(gen.lengths.sum()), steps + len(per_step), committed + sum(per_step)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "mean_acceptance_length": committed / max(1, steps), "new_tokens": tokens}


def run_vllm(target_path: str, export_dir: Path, prompts: list[str], new: int, k: int, dtype: str) -> dict:
    """vLLM greedy with the exported EAGLE-1 draft: tokens/s and 1 + accepted / drafts from its counters."""
    from vllm import LLM, SamplingParams

    spec = {"method": "eagle", "model": str(export_dir), "num_speculative_tokens": k}
    llm = LLM(model=target_path, speculative_config=spec, dtype=dtype, disable_log_stats=False,
              max_model_len=min(2048, 4 * new + 512), gpu_memory_utilization=0.5, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=False)
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up
    before = counters(llm)
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:  # one request at a time, as mmspec runs them
        tokens += len(llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids)
    wall = time.perf_counter() - start
    after = counters(llm)
    drafts = after["drafts"] - before["drafts"]
    accepted = after["accepted"] - before["accepted"]
    return {"tokens_per_s": tokens / wall, "mean_acceptance_length": 1 + accepted / max(1, drafts), "new_tokens": tokens}


def counters(llm) -> dict:
    """vLLM's spec-decode counters (``LLM.get_metrics``): drafts and accepted draft tokens so far."""
    found = {"drafts": 0, "accepted": 0}
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            found["drafts"] += int(metric.value)
        elif metric.name == "vllm:spec_decode_num_accepted_tokens":
            found["accepted"] += int(metric.value)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", required=True, help="eagle1 heads (mmspec heads train --kind eagle1)")
    p.add_argument("--target", default=None, help="the target (default: the one the heads were trained for)")
    p.add_argument("--export", default=None, help="folder for the vLLM export (default: a temporary folder)")
    p.add_argument("--prompts", type=int, default=20, help="held-out code prompts (default 20)")
    p.add_argument("--new", type=int, default=128, help="new tokens per prompt (default 128)")
    p.add_argument("--k", type=int, default=4, help="drafted tokens per step on both sides (default 4)")
    p.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    reason = missing()
    if reason:
        print(f"engine_compare: skipped: {reason}")
        return 0
    from mmspec.heads.export import target_path, export
    from mmspec.heads.store import read_heads_config
    from mmspec.text.prompts import held_out_prompts

    target = args.target or read_heads_config(args.heads)["target"]
    out = Path(args.export or tempfile.mkdtemp(prefix="mmspec-vllm-"))
    export(args.heads, "vllm", out, args.dtype, target)
    prompts = held_out_prompts(args.prompts)
    rows = {"mmspec": run_mmspec(target, args.heads, prompts, args.new, args.k, args.dtype),
            "vllm": run_vllm(target_path(target), out, prompts, args.new, args.k, args.dtype)}
    print(f"{'engine':8} {'tokens/s':>10} {'mean acceptance length':>24}   ({torch.cuda.get_device_name()}, "
          f"{len(prompts)} prompts x {args.new} tokens, k={args.k}, {args.dtype})")
    for name, row in rows.items():
        print(f"{name:8} {row['tokens_per_s']:10.1f} {row['mean_acceptance_length']:24.3f}")
    gap = abs(rows["vllm"]["mean_acceptance_length"] / rows["mmspec"]["mean_acceptance_length"] - 1)
    print(f"acceptance length: vLLM within {100 * gap:.1f}% of mmspec")
    if args.json:
        Path(args.json).write_text(json.dumps({**rows, "k": args.k, "prompts": len(prompts), "new": args.new,
                                               "device": torch.cuda.get_device_name()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
