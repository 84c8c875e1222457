"""What one verify forward over N nodes costs, as a chain of N and as a tree of N, relative to one frame.

A token tree verifies more candidates per forward; it pays off only while a forward over N frames costs
about one over a single frame. For a loaded target (default: the modality's zoo target) this times one
``target.forward`` over N = 1, 2, 4, ..., 64 frames after a prefix (rolled back after each call): a chain
(no mask beyond the model's own) and a binary tree (a 4-D tree mask, positions by depth), interleaved,
median of the repeats after a warm-up, each relative to a one-frame forward. Each case runs as a burst of the same
forward, as in a decode loop, and only the burst's last forwards are timed: on an Intel Xeon the first three or four
one-frame forwards after a 64-frame one ran 5-20% slower (3.78, 3.64, 3.42, then 3.1-3.2 ms), which flattered every
ratio to the one-frame forward then timed first in each round. The cases now run widest first, the one-frame
forward last.

    python benchmarks/tree_forward_cost.py [--modality text|image|speech] [--target zoo:code-target]
        [--device cuda] [--dtype float16] [--repeats 10] [--fast | --no-fast] [--json benchmarks/results/tree_forward_cost.json]

``--fast`` / ``--no-fast``: the static-cache forward on prepacked products (``mmspec.fast``) or the eager HF forward
(default: the adapter's choice, fast on a CPU); the printout names the path.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mmspec import modalities
from mmspec.bench import environment
from mmspec.loop import synchronizer

SIZES = (1, 2, 4, 8, 16, 32, 64)
SETTLE, TIMED = 6, 6  # per case and round: forwards run untimed, then timed (see the module's docstring)


def binary_tree(n: int, device) -> torch.Tensor:
    """Parents ``[n]`` of a binary tree over the forward's frames: the root (-1) then two children each."""
    return torch.tensor([-1] + [(j - 1) // 2 for j in range(1, n)], dtype=torch.long, device=device)


def timed(target, frames: torch.Tensor, parents, sync) -> float:
    """Seconds of one forward over ``frames [1, N, K]``; the target is rolled back after it."""
    sync()
    t0 = time.perf_counter()
    target.forward(frames, parents)
    sync()
    seconds = time.perf_counter() - t0
    target.keep(target.pos - frames.shape[1])
    return seconds


def measure(target, sizes, repeats: int, warmup: int) -> dict:
    """Median ms of a one-frame forward and of chain / tree forwards per N, interleaved round by round."""
    sync, device, K = synchronizer(target.device), target.device, target.num_codebooks
    cases = {}
    for n in sorted(sizes, reverse=True):  # widest first, so the one-frame forward runs after narrow ones (docstring)
        frames = torch.zeros(1, n, K, dtype=torch.long, device=device)  # code / token 0: valid everywhere
        cases[("chain", n)] = (frames, None)
        cases[("tree", n)] = (frames, binary_tree(n, device) if n > 1 else None)
    cases[("one", 1)] = (torch.zeros(1, 1, K, dtype=torch.long, device=device), None)
    times = {case: [] for case in cases}
    for i in range(warmup + repeats):
        for case, (frames, parents) in cases.items():
            for j in range(SETTLE + TIMED):  # a burst of the same forward, as in a decode loop; the first SETTLE untimed
                seconds = timed(target, frames, parents, sync)
                if i >= warmup and j >= SETTLE:
                    times[case].append(seconds)
    return {case: 1e3 * statistics.median(t) for case, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", default="text", choices=["text", "image", "speech"])
    ap.add_argument("--target", default=None, help="the target to load (default: the modality's zoo target)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--prefix", type=int, default=32, help="frames in the cache before the timed forward")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None)
    args = ap.parse_args()
    # 1. Load the target and fill its cache: the prompt, then a prefix of frames.
    modality = modalities.get(args.modality)
    name = args.target or modality.default_target
    target = modality.load(name, device=args.device, dtype=args.dtype, fast=args.fast)
    target.start(modality.prompts(modality.default_prompt, 1), 1)
    room = int(target.max_frames - target.pos.max())
    prefix = max(0, min(args.prefix, room - max(SIZES) - 1))
    if prefix:
        target.forward(torch.zeros(1, prefix, target.num_codebooks, dtype=torch.long, device=target.device))
    sizes = [n for n in SIZES if n <= room - prefix]
    # 2. Time, then report relative to one frame.
    with torch.inference_mode():
        ms = measure(target, sizes, args.repeats, args.warmup)
    one = ms[("one", 1)]
    path = getattr(target, "forward_path", "eager")
    print(f"{args.modality} target {name} on {target.device}, {path} forward; one-frame forward {one:.2f} ms "
          f"(median of {args.repeats})")
    print(f"{'N':>4} {'chain ms':>9} {'tree ms':>8} {'chain / 1':>10} {'tree / 1':>9}")
    rows = {}
    for n in sizes:
        c, t = ms[("chain", n)], ms[("tree", n)]
        rows[n] = {"chain_ms": round(c, 3), "tree_ms": round(t, 3), "chain_rel": round(c / one, 2), "tree_rel": round(t / one, 2)}
        print(f"{n:4d} {c:9.2f} {t:8.2f} {c / one:10.2f} {t / one:9.2f}")
    if args.json:
        result = {"environment": environment(), "modality": args.modality, "target": name, "device": str(target.device),
                  "forward": path,
                  "prefix": prefix, "repeats": args.repeats, "warmup": args.warmup, "one_frame_ms": round(one, 3),
                  "sizes": rows}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
