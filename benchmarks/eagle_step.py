"""Time one drafted frame of the zoo text heads on a CPU: ``EagleDrafter._step`` for one new pair, with the
layer as the drafter runs it there (its int8 copy) against the float layer, in one process, interleaved,
median of many calls.

    python benchmarks/eagle_step.py [--threads 1] [--calls 300]
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--context", type=int, default=40, help="pairs already in the drafter's cache")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mmspec.drafters.int8 import int8_copy
    from mmspec.heads.store import load_heads
    from mmspec.modalities import get
    from mmspec.sampling import Sampler
    from mmspec.types import Sampling

    mod = get("text")
    target = mod.load(mod.default_target)
    drafter = load_heads("zoo:code-heads", target)
    target.track_hidden(True)
    target.start(mod.suite.prompts(1, target), 64)
    drafter.start(target, Sampler(Sampling(), 0, target.device, keyed=False), None, 64)
    attn = drafter.layer.layer.self_attn
    H, S = drafter.layer.sizes["hidden_size"], args.context
    keys = torch.randn(1, attn.config.num_attention_heads, S, attn.head_dim)
    values, feats = torch.randn_like(keys), torch.randn(1, 1, H)
    frames, positions = torch.randint(0, target.vocab_size, (1, 1, 1)), torch.tensor([[S]])
    drafter.keys = keys
    nets = {"int8 copy (as drafted)": int8_copy(drafter.layer), "float32 layer": drafter.layer}
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for _ in range(args.calls):
            for name, net in nets.items():
                drafter.net = net
                t = time.perf_counter()
                drafter._step(feats, frames, positions, keys, values, None)
                times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        ts.sort()
        print(f"{name:26s} {1000 * ts[len(ts) // 2]:.3f} ms per drafted frame (median of {len(ts)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
