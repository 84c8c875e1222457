"""mmspec against Hugging Face ``generate`` on the same model pair, prompts and machine.

    python benchmarks/text_vs_hf.py --target zoo:code-target --draft zoo:code-draft --prompts 20 --new 128 [--no-fast]

Rows: HF greedy vs mmspec autoregressive; HF prompt lookup (prompt_lookup_num_tokens=k) vs mmspec
prompt lookup at the same k; HF assisted generation (assistant_model, its default dynamic draft length)
vs mmspec draft-model speculation (adaptive draft length up to --k, or exactly k with --fixed-k; with
--confidence c, mmspec also stops drafting once the draft token's probability falls below c, as HF's
assistant does with its default assistant_confidence_threshold = 0.4).
"autoregressive static" is HF ``generate(cache_implementation="static")`` (compiled where HF compiles) against
the same mmspec row. mmspec runs its fast path (``mmspec.fast``) unless ``--no-fast``; HF runs its own forward.
Every pair is checked for identical tokens. Each measurement is warmed up once and repeated; the
median wall time over prompts x repeats is reported with the hardware.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import transformers

import mmspec
from mmspec.text import TextTarget
from mmspec.text.prompts import held_out_prompts


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hf_run(target: TextTarget, prompt: str, new: int, **kwargs):
    ids, _ = target.encode(prompt)
    t0 = time.perf_counter()
    out = target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                pad_token_id=target.tokenizer.pad_token_id, **kwargs)
    wall = time.perf_counter() - t0
    row = out[0, ids.shape[1]:].tolist()
    eos = set(target.eos_ids.tolist())
    for i, t in enumerate(row):
        if t in eos:
            row = row[: i + 1]
            break
    return row, wall


def mm_run(target: TextTarget, drafter, prompt: str, new: int, k: int):
    gen = mmspec.generate(target, drafter, prompt, max_new_tokens=new, k=k)
    return gen.token_ids()[0], gen.wall_s, gen.stats


def measure(name, hf, mm, prompts, repeats) -> dict:
    """One pair: a warm-up, then HF and mmspec alternating on every prompt, ``repeats`` times."""
    hf(prompts[0]), mm(prompts[0])  # warm-up
    hf_walls, mm_walls, same, accepted, hf_tokens, mm_tokens = [], [], True, [], 0, 0
    for _ in range(repeats):
        for p in prompts:
            a, wa = hf(p)
            b, wb, stats = mm(p)
            same &= a == b
            hf_walls.append(wa), mm_walls.append(wb), accepted.append(stats["mean_accepted"])
            hf_tokens += len(a)
            mm_tokens += len(b)
    r = {"hf_tokens_per_s": hf_tokens / sum(hf_walls), "mmspec_tokens_per_s": mm_tokens / sum(mm_walls),
         "ratio": (mm_tokens / sum(mm_walls)) / (hf_tokens / sum(hf_walls)),
         "identical": same, "mean_accepted": statistics.mean(accepted)}
    print(f"{name:16} HF {r['hf_tokens_per_s']:7.1f} tok/s   mmspec {r['mmspec_tokens_per_s']:7.1f} tok/s   "
          f"ratio {r['ratio']:.2f}x   identical {same}   mean accepted {r['mean_accepted']:.2f}", flush=True)
    return r


def chosen(pairs: dict, names: str | None) -> dict:
    """The pairs named in ``--pairs`` (all when not given); SystemExit naming the allowed ones otherwise."""
    if not names:
        return pairs
    keep = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in keep if n not in pairs]
    if unknown or not keep:
        raise SystemExit(f"--pairs: unknown {unknown or names!r}; allowed: {', '.join(pairs)}")
    return {n: pairs[n] for n in keep}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="zoo:code-target")
    ap.add_argument("--draft", default="zoo:code-draft")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--k", type=int, default=10, help="longest draft for mmspec draft-model speculation")
    ap.add_argument("--fixed-k", action="store_true", help="draft exactly k tokens (default: adaptive length <= k)")
    ap.add_argument("--confidence", type=float, default=None,
                    help="mmspec draft model: stop drafting below this draft-token probability (default: off)")
    ap.add_argument("--pairs", default=None, help="comma-separated pairs to run (default: all)")
    ap.add_argument("--lookup-k", type=int, default=10, help="prompt_lookup_num_tokens for both libraries")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tree", type=int, default=8, help="node budget of the tree pairs")
    ap.add_argument("--width", type=int, default=2, help="children per expanded node (draft model tree)")
    ap.add_argument("--dynamic", action="store_true", help="draft model tree: EAGLE-2 expansion")
    ap.add_argument("--tree-depth", type=int, default=4, help="deepest draft of the draft model tree")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                    help="mmspec's fast path (default: on where it measured faster)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = TextTarget.from_pretrained(args.target, device="cpu", fast=args.fast)
    draft = TextTarget.from_pretrained(args.draft, device="cpu", fast=args.fast)
    prompts = held_out_prompts(args.prompts)
    pairs = {
        "autoregressive": (lambda p: hf_run(target, p, args.new),
                           lambda p: mm_run(target, None, p, args.new, 1)),
        "autoregressive static": (lambda p: hf_run(target, p, args.new, cache_implementation="static"),
                                  lambda p: mm_run(target, None, p, args.new, 1)),
        "prompt lookup": (lambda p: hf_run(target, p, args.new, prompt_lookup_num_tokens=args.lookup_k),
                          lambda p: mm_run(target, mmspec.PromptLookupDrafter(max_ngram=2), p, args.new, args.lookup_k)),
        "draft model": (lambda p: hf_run(target, p, args.new, assistant_model=draft.model),
                        lambda p: mm_run(target, mmspec.ModelDrafter(draft, adaptive=not args.fixed_k,
                                                                     confidence=args.confidence), p, args.new, args.k)),
        # a token tree against the same HF assisted generation (HF verifies chains only)
        "draft model tree": (lambda p: hf_run(target, p, args.new, assistant_model=draft.model),
                             lambda p: mm_run(target, mmspec.ModelDrafter(draft, tree=args.tree, width=args.width,
                                                                          dynamic=args.dynamic), p, args.new, args.tree_depth)),
        "prompt lookup tree": (lambda p: hf_run(target, p, args.new, prompt_lookup_num_tokens=args.lookup_k),
                               lambda p: mm_run(target, mmspec.PromptLookupDrafter(max_ngram=2, tree=args.tree), p,
                                                args.new, args.lookup_k)),
    }
    pairs = chosen(pairs, args.pairs)
    results = {name: measure(name, hf, mm, prompts, args.repeats) for name, (hf, mm) in pairs.items()}
    meta = {"hardware": _cpu_name(), "cpu_threads": torch.get_num_threads(), "mmspec_forward": target.forward_path,
            "torch": torch.__version__, "transformers": transformers.__version__, "prompts": len(prompts),
            "new_tokens": args.new, "k": args.k, "adaptive": not args.fixed_k, "confidence": args.confidence,
            "lookup_k": args.lookup_k, "tree": args.tree, "width": args.width, "dynamic": args.dynamic,
            "tree_depth": args.tree_depth}
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
