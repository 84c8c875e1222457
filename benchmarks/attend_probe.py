"""Few-frame attention per layer, ``mmspec.skinny.attend`` against torch's scaled-dot-product attention, with the
keys and values cold as inside a forward: before each timed pass over 8 layers' caches (the text zoo target's
shapes: 8 heads of 56 features, 460 cached slots, a cache view of a longer buffer) a 120 MB read evicts them, as the
weights streaming through a forward do. Median per layer.

    python benchmarks/attend_probe.py [--frames 1,2,5,9,17,33] [--slots 460] [--repeats 40]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mmspec import skinny


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", default="1,2,5,9,17,33")
    ap.add_argument("--slots", type=int, default=460)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)
    if skinny.library() is None:
        raise SystemExit(f"no C kernels here: {skinny.reason()}")
    torch.manual_seed(0)
    layers, heads, D, S = 8, 8, 56, args.slots
    evict = torch.randn(30_000_000)
    keys, values = torch.randn(layers, 1, heads, S + 273, D), torch.randn(layers, 1, heads, S + 273, D)
    lowest = torch.finfo(torch.float32).min
    for T in (int(f) for f in args.frames.split(",")):
        q = torch.randn(1, T, heads, D).transpose(1, 2)
        seen = torch.ones(T, S, dtype=torch.bool)
        seen[:, S - T:] = torch.ones(T, T, dtype=torch.bool).tril()
        mask = torch.zeros(1, 1, T, S).masked_fill(~seen, lowest)
        runs = {"mmspec attend": lambda k, v: skinny.attend(q, k, v, mask, 0.13),
                "torch sdpa": lambda k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.13)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                evict.sum()
                start = time.perf_counter()
                for layer in range(layers):
                    run(keys[layer, :, :, :S], values[layer, :, :, :S])
                times[name].append((time.perf_counter() - start) / layers)
        mine, theirs = (1e6 * statistics.median(times[name]) for name in runs)
        print(f"{T:3d} frames: mmspec attend {mine:7.1f} us/layer   torch sdpa {theirs:7.1f} us/layer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
