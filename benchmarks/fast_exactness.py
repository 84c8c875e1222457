"""How often the fast path's greedy output differs from the eager path's (float rounding of other kernels).

The fast path (``mmspec.fast``) computes the same functions with other kernels (oneDNN's packed products, fused
RMSNorm, one SDPA call), so its float32 logits differ from the eager Hugging Face forward by rounding (~1e-5);
greedy decoding can then pick another token where two logits nearly tie. For each modality's zoo target this runs
greedy autoregressive decoding on the bench prompts on both paths (and, for text, HF ``generate``) and counts the
rows that differ and where the first difference is; it also checks that speculative decoding on the fast path
equals autoregressive decoding on the fast path (the identity every exact method promises on one path).

    python benchmarks/fast_exactness.py [--modalities text,image,speech] [--json benchmarks/results/fast_exactness.json]
"""
from __future__ import annotations

import argparse
import json

import torch

import mmspec
from mmspec import methods as named
from mmspec import modalities


def first_difference(a: list, b: list) -> int | None:
    """The first index where two id rows differ (a length difference counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def hf_greedy(target, prompt: str, new: int) -> list[int]:
    ids, _ = target.encode(prompt)
    out = target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                pad_token_id=target.tokenizer.pad_token_id)
    row = out[0, ids.shape[1]:].tolist()
    eos = set(target.eos_ids.tolist())
    cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
    return row[:cut]  # K = 1: token_ids() gives plain ids


def check(name: str, n_prompts: int | None, method: str) -> dict:
    """Greedy rows of one modality on both paths (and HF for text); the fast path's own speculative identity."""
    modality = modalities.get(name)
    fast = modality.load(modality.default_target, fast=True)
    eager = modality.load(modality.default_target, fast=False)
    suite = modality.suite
    prompts = suite.prompts(n_prompts or suite.n_prompts[0], fast)
    new = suite.max_new[0]
    rows = []
    for prompt in prompts:
        a = mmspec.autoregressive(fast, prompt, max_new_tokens=new).token_ids()[0]
        b = mmspec.autoregressive(eager, prompt, max_new_tokens=new).token_ids()[0]
        spec = named.run(modality, fast, prompt, drafter=method, rule="greedy", k=suite.k, max_new_tokens=new,
                         heads=None).token_ids()[0]
        row = {"fast_vs_eager": first_difference(a, b), "speculative_vs_autoregressive_fast": first_difference(spec, a),
               "frames": len(a)}
        if name == "text":
            row["fast_vs_hf_generate"] = first_difference(a, hf_greedy(fast, prompt, new))
        rows.append(row)
    summary = {key: sum(r[key] is not None for r in rows) for key in rows[0] if key != "frames"}
    print(f"{name}: {len(rows)} prompts x {new} frames; rows that differ: {summary} (speculative method: {method})",
          flush=True)
    return {"prompts": len(rows), "max_new": new, "method": method, "rows_that_differ": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", default="text,image,speech")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per modality (default: the bench suite's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    method = {"text": "prompt-lookup|heads", "image": "heads", "speech": "heads"}
    out = {name: check(name, args.prompts, method[name]) for name in args.modalities.split(",")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
