"""Time one drafted frame of a zoo EAGLE layer on a CPU: ``EagleDrafter._step`` for one new pair, with the
layer as the drafter runs it there (``Int8EagleLayer``: the step as one call of ``eagle.c`` where the skinny kernel
builds, else its int8 copy) against the same layer's parts called one by one (session 10's drafting), its int8 copy
(``Int8Head`` per map, on the skinny kernel or on torch's int8 kernel), the float layer and copies whose products run
on the fast path's prepacked oneDNN weights (``mmspec.fast.PackedLinear``, float32 and bfloat16), in one process,
interleaved, median of many calls. Then a whole greedy chain of ``--chain`` frames (``EagleDrafter._chain``: head
read, argmax, step per frame) as one call and as the drafter's loop over the parts. The choice of int8 weights for
drafting rests on this.

    python benchmarks/eagle_step.py [--modality text|speech] [--threads 1] [--calls 300] [--chain 4]
"""
from __future__ import annotations

import argparse
import time

import copy

import torch


class _Packed(torch.nn.Module):
    """A linear map on ``PackedLinear`` weights of ``dtype`` (inputs cast to it, outputs back to float32)."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype):
        from mmspec.fast import PackedLinear

        super().__init__()
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.linear, self.dtype = PackedLinear([linear.weight.detach().to(dtype)], [bias]), dtype

    def forward(self, x):
        return self.linear(x.to(self.dtype)).float()


def packed_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` maps run prepacked (as the target's on the fast path)."""
    out = copy.deepcopy(module)
    for child in list(out.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Linear):
                setattr(child, attr, _Packed(sub, dtype))
    return out


class _Parts:
    """An ``Int8EagleLayer`` seen only through its parts (``project``, ``qkv``, ``attend``): the drafter then calls them
    one by one with its torch operations between them, as before the step became one call."""

    def __init__(self, net):
        self.project, self.qkv, self.attend = net.project, net.qkv, net.attend


def timed(drafter, nets: dict, call, calls: int, unit: str) -> None:
    """Run ``call()`` with each of ``nets`` as the drafter's layer, interleaved, ``calls`` times; print the medians."""
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(calls):
        for name, net in nets.items():
            drafter.net = net
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        ts.sort()
        print(f"{name:60s} {1000 * ts[len(ts) // 2]:.3f} ms {unit} (median of {len(ts)})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", default="text", choices=["text", "speech"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--context", type=int, default=40, help="pairs already in the drafter's cache")
    p.add_argument("--chain", type=int, default=4, help="frames of the timed greedy chain")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mmspec.drafters.int8 import Int8Head, eagle_int8, int8_copy
    from mmspec.heads.store import load_heads
    from mmspec.modalities import get
    from mmspec.sampling import Sampler
    from mmspec.types import Sampling

    mod = get(args.modality)
    target = mod.load(mod.default_target)
    drafter = load_heads(mod.default_heads, target)
    target.track_hidden(True)
    target.start(mod.suite.prompts(1, target), 64)
    drafter.start(target, Sampler(Sampling(), 0, target.device, keyed=False), None, 64)
    attn = drafter.layer.layer.self_attn
    H, S = drafter.layer.sizes["hidden_size"], args.context
    keys = torch.randn(1, attn.config.num_attention_heads, S, attn.head_dim)
    values, feats = torch.randn_like(keys), torch.randn(1, 1, H)
    frames = torch.randint(0, target.vocab_size, (1, 1, target.num_codebooks))
    positions = torch.tensor([[S]])
    drafter.keys = keys
    torch_int8 = int8_copy(drafter.layer)
    for module in torch_int8.modules():  # the same int8 maps on torch's int8 kernel (before session 10)
        if isinstance(module, Int8Head):
            module.skinny = None
    drafted = eagle_int8(drafter.layer)
    nets = {"as drafted (Int8EagleLayer where the skinny kernel builds)": drafted,
            "Int8EagleLayer's parts one call each (session 10)": _Parts(drafted),
            "int8 copy, Int8Head per map": int8_copy(drafter.layer), "int8 copy, torch's int8 kernel": torch_int8,
            "float32 layer": drafter.layer,
            "prepacked float32": packed_copy(drafter.layer, torch.float32),
            "prepacked bfloat16": packed_copy(drafter.layer, torch.bfloat16)}
    with torch.inference_mode():
        timed(drafter, nets, lambda: drafter._step(feats, frames, positions, keys, values, None), args.calls,
              "per drafted frame")
        # a whole greedy chain: as one call where the layer is an Int8EagleLayer, else the drafter's own loop
        drafter.keys, drafter.values, drafter.holes = keys, values, False
        drafter.next_feat, drafter.P, drafter.confidence = feats, torch.tensor([S]), 0.0  # every chain k frames long
        chains = {"greedy chain as drafted (one call where the kernel builds)": drafted,
                  "greedy chain, the drafter's loop over the parts": _Parts(drafted)}
        timed(drafter, chains, lambda: drafter._chain(args.chain), args.calls, f"per chain of {args.chain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
