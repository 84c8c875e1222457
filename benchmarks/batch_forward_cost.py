"""What one target forward costs with B rows of T frames each, on the text zoo target after B of the bench's held-out
prompts (left-padded, as a batch runs them), on the fast path: the cost of an autoregressive step (T = 1) against a
verify (T = k + 1) at batch sizes 1 and 8, median of repeats.

    python benchmarks/batch_forward_cost.py [--shapes 1x1,1x9,8x1,8x9] [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmspec import modalities


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x1,1x9,8x1,8x9")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    modality = modalities.get("text")
    target = modality.load(modality.default_target)
    prompts = modality.suite.prompts(8, target)
    for shape in args.shapes.split(","):
        B, T = (int(n) for n in shape.split("x"))
        target.start(prompts[:B], 64)
        frames = torch.zeros(B, T, 1, dtype=torch.long)
        times = []
        for i in range(3 + args.repeats):
            t0 = time.perf_counter()
            target.forward(frames)
            if i >= 3:
                times.append(time.perf_counter() - t0)
            target.keep(target.pos - T)
        print(f"B = {B}, T = {T}: {1e3 * statistics.median(times):.2f} ms per forward "
              f"(cache {target.cache.length} slots, {target.forward_path} path)")


if __name__ == "__main__":
    main()
