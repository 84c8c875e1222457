"""Decoding speed by weight dtype on a CPU: the text zoo pair in float32 and float16, one process.

On a CPU whose single-token forward is limited by memory bandwidth, half-precision weights halve the bytes
each forward reads, while a several-token forward (what verification runs) becomes compute-bound in
half precision. So the dtype moves both the baseline and the speculative speedup. This runs, for each
dtype, autoregressive greedy decoding, prompt lookup and the draft model (k = 4, as `mmspec bench
--suite text`) on the same held-out prompts, checks every speculative output against autoregressive
decoding in the same dtype (prompts token-identical; where one differs, the gap between the target's two
best logits at the first differing position), and reports tokens/s, the speedup within the dtype and
against float32 autoregressive decoding, and how many prompts decode to the same tokens in both dtypes.

    python benchmarks/cpu_dtype.py --prompts 20 --new 96 --json benchmarks/results/cpu_dtype_cpu.json
"""
from __future__ import annotations

import argparse
import json

import torch

import mmspec
from mmspec.bench import environment
from mmspec.text import TextTarget
from mmspec.text.prompts import held_out_prompts

DTYPES = ("float32", "float16")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two outputs differ (None when identical)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def top2_gap(target: TextTarget, prompt: str, tokens: list[int], pos: int) -> float:
    """Target's top-1 minus top-2 logit for the token after ``prompt + tokens[:pos]`` (one forward)."""
    ids, _ = target.encode(prompt)                                                   # [1, P]
    ids = torch.cat([ids, torch.tensor([tokens[:pos]], dtype=torch.long)], dim=1)   # [1, P + pos]
    with torch.no_grad():
        logits = target.model(input_ids=ids, use_cache=False).logits[0, -1].float()  # [V]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def run_dtype(dtype: str, prompts: list[str], new: int, k: int) -> dict:
    """Tokens/s and outputs per method for one dtype (warm-up first)."""
    target = TextTarget.from_pretrained("zoo:code-target", device="cpu", dtype=dtype)
    draft = TextTarget.from_pretrained("zoo:code-draft", device="cpu", dtype=dtype)
    methods = {"autoregressive": lambda p: mmspec.autoregressive(target, p, max_new_tokens=new),
               "prompt lookup": lambda p: mmspec.generate(target, mmspec.PromptLookupDrafter(), p,
                                                          max_new_tokens=new, k=k),
               "draft model": lambda p: mmspec.generate(target, mmspec.ModelDrafter(draft), p,
                                                        max_new_tokens=new, k=k)}
    out = {}
    for name, fn in methods.items():
        fn(prompts[0])  # warm-up
        gens = [fn(p) for p in prompts]
        out[name] = {"tokens": [g.token_ids()[0] for g in gens], "wall_s": sum(g.wall_s for g in gens),
                     "mean_accepted": sum(g.stats["mean_accepted"] for g in gens) / len(gens)}
        out[name]["tokens_per_s"] = sum(len(t) for t in out[name]["tokens"]) / out[name]["wall_s"]
    # Where a method's output left autoregressive decoding's: how close the target's two best tokens were.
    ar = out["autoregressive"]["tokens"]
    for name, r in out.items():
        r["first_difference"] = [first_difference(a, b) for a, b in zip(r["tokens"], ar)]
        r["top2_gap_at_difference"] = [None if i is None else round(top2_gap(target, p, b, i), 4)
                                       for p, i, b in zip(prompts, r["first_difference"], ar)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    prompts = held_out_prompts(args.prompts)
    runs = {dtype: run_dtype(dtype, prompts, args.new, args.k) for dtype in DTYPES}
    base = runs["float32"]["autoregressive"]["tokens_per_s"]
    rows = []
    print(f"{'dtype':8} {'method':15} {'tokens/s':>9} {'speedup':>8} {'vs fp32 AR':>10} {'accepted':>8} identical")
    for dtype, res in runs.items():
        ar = res["autoregressive"]
        for name, r in res.items():
            row = {"dtype": dtype, "method": name, "tokens_per_s": round(r["tokens_per_s"], 2),
                   "speedup": round(r["tokens_per_s"] / ar["tokens_per_s"], 3),
                   "vs_float32_autoregressive": round(r["tokens_per_s"] / base, 3),
                   "mean_accepted": round(r["mean_accepted"], 3),
                   "identical_prompts": sum(a == b for a, b in zip(r["tokens"], ar["tokens"])),
                   "first_difference": r["first_difference"], "top2_gap_at_difference": r["top2_gap_at_difference"]}
            rows.append(row)
            print(f"{dtype:8} {name:15} {row['tokens_per_s']:9.1f} {row['speedup']:8.2f} "
                  f"{row['vs_float32_autoregressive']:10.2f} {row['mean_accepted']:8.2f} "
                  f"{row['identical_prompts']}/{len(prompts)}",
                  *[f"(prompt {j}: token {i}, top-2 gap {g})" for j, (i, g) in
                    enumerate(zip(row["first_difference"], row["top2_gap_at_difference"])) if i is not None])
    same = sum(a == b for a, b in zip(runs["float32"]["autoregressive"]["tokens"],
                                      runs["float16"]["autoregressive"]["tokens"]))
    print(f"float16 and float32 autoregressive outputs identical on {same} of {len(prompts)} prompts")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "prompts": len(prompts), "new_tokens": args.new, "k": args.k,
                       "rows": rows, "same_tokens_float16_float32": same, "torch_threads": torch.get_num_threads()},
                      f, indent=1)


if __name__ == "__main__":
    main()
