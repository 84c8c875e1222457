"""Frames per target forward (machine-independent) and frames/s of drafter configurations on a few of a
suite's prompts, one run each: how the heads' chain depth, tree budget and mixtures were chosen before the
timed ``mmspec bench`` runs (use those for speedups).

    python benchmarks/heads_explore.py --modality text --prompts 5 --max-new-tokens 128 \
        heads:greedy:6 "heads:greedy:6:12:3" "prompt-lookup+heads:greedy:6:8" "heads:speculative:6:0:2:1"

Each configuration is ``drafter:rule:k[:tree[:width[:temperature]]]`` (tree 0: a chain).
"""
from __future__ import annotations

import argparse

import torch

from mmspec import methods
from mmspec.modalities import get
from mmspec.types import Sampling


def parse(config: str) -> dict:
    parts = config.split(":")
    if len(parts) < 3:
        raise SystemExit(f"configuration {config!r}: expected drafter:rule:k[:tree[:width[:temperature]]]")
    drafter, rule, k, tree, width, temperature = (parts + ["0", "2", "0"][len(parts) - 3:])[:6]
    return {"drafter": drafter, "rule": rule, "k": int(k), "tree": int(tree) or None, "width": int(width),
            "temperature": float(temperature)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--modality", default="text")
    p.add_argument("--heads", default=None, help="heads folder (default: the modality's zoo heads)")
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    mod = get(args.modality)
    target, draft = mod.load(mod.default_target), mod.load(mod.default_draft)
    prompts = mod.suite.prompts(args.prompts, target)
    for c in map(parse, args.configs):
        steps = frames = 0
        wall = 0.0
        for i, prompt in enumerate(prompts):
            gen = methods.run(mod, target, prompt, drafter=c["drafter"], rule=c["rule"], draft=draft, k=c["k"],
                              max_new_tokens=args.max_new_tokens, sampling=Sampling(temperature=c["temperature"]),
                              seed=i, tree=c["tree"], width=c["width"], heads=args.heads)
            steps, frames, wall = steps + gen.stats["steps"], frames + gen.stats["new_tokens"], wall + gen.wall_s
        print(f"{c['drafter']:22} {c['rule']:12} k={c['k']} tree={c['tree'] or 0} width={c['width']} "
              f"T={c['temperature']:g}: {frames / steps:.2f} frames/forward, {frames / wall:.1f} frames/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
