"""How long torch.compile (inductor, freezing) takes to compile the HF forward of the text zoo target with a static
cache, and what one compiled forward then costs: the probe behind BENCHMARKS.md's "Fast path" choice of prepacked
products over a compiled forward (41 s for the first shape on a 2-vCPU AMD EPYC).

    python benchmarks/compile_probe.py [--sizes 1,8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch._inductor.config as inductor
from transformers import StaticCache

from mmspec.text import TextTarget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8", help="frames per forward to compile and time")
    args = ap.parse_args()
    inductor.freezing = True
    model = TextTarget.from_pretrained("zoo:code-target", fast=False).model
    cache = StaticCache(config=model.config, max_cache_len=256)
    ids = torch.randint(5, 8000, (1, 40))
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(40))
        forward = torch.compile(model.forward, dynamic=False)
        for n in (int(s) for s in args.sizes.split(",")):
            def step():
                frames = torch.randint(5, 8000, (1, n))
                return forward(input_ids=frames, past_key_values=cache, use_cache=True,
                               cache_position=torch.arange(40, 40 + n))
            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            print(f"N={n}: compile + first call {first:.1f} s, then {1e3 * statistics.median(times):.2f} ms", flush=True)


if __name__ == "__main__":
    main()
