"""What each of session 10's C pieces saves inside a fast forward of the text zoo target: the attention kernel
(``mmspec.skinny.attend`` against torch's scaled-dot-product attention), the elementwise work folded into the
product calls (RMSNorm, SiLU gate, residual, rotary angles: against the same PackedLinear running them as torch
operations) and the final norm (one C call against ``F.rms_norm``). One process, the variants interleaved in turns
of 8 back-to-back forwards over a 413-token prompt (each turn's first forward untimed), median per forward.

    python benchmarks/kernel_ab.py [--frames 1,9] [--turns 10] [--json benchmarks/results/kernel_ab.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mmspec import fast, skinny
from mmspec.bench import environment


def torch_ops(call):
    """``PackedLinear.__call__`` with its options run as torch operations around the plain product."""

    def run(self, x, norm=None, gated=False, residual=None, rope=None):
        if norm is not None:
            x = F.rms_norm(x, (x.shape[-1],), norm[0], norm[1])
        if gated:
            gate, up = x.split(self.in_features, dim=-1)
            x = F.silu(gate) * up
        y = call(self, x)
        if rope is not None:
            M, D = y.reshape(-1, y.shape[-1]).shape[0], rope[0].shape[-1]
            heads = y.view(M, -1, D)
            cos, sin = rope[0].reshape(M, D), rope[1].reshape(M, D)
            heads[:, : rope[2]] = fast.rotate(heads[:, : rope[2]], cos[:, None], sin[:, None])
        return y if residual is None else residual + y

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", default="1,9")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if skinny.library() is None:
        raise SystemExit(f"no C kernels here: {skinny.reason()}")
    from mmspec.modalities import get

    mod = get("text")
    target = mod.load(mod.default_target, fast=True)
    prompt = mod.suite.prompts(20, target)[5]
    call, norm, frames_limit = fast.PackedLinear.__call__, skinny.rms_norm, fast.ATTEND_FRAMES
    variants = {
        "as shipped": {},
        "torch attention": {"attend": 0},
        "elementwise as torch ops": {"call": torch_ops(call)},
        "final norm by torch": {"norm": lambda x, w, eps: F.rms_norm(x, (x.shape[-1],), w, eps)},
    }

    def turn(T: int) -> list[float]:
        times = []
        for _ in range(8):
            ids = torch.randint(2, 8000, (1, T, 1))
            start = time.perf_counter()
            target.forward(ids)
            times.append(time.perf_counter() - start)
            target.keep(target.pos - T + 1)
        return times[1:]

    results = {}
    for T in (int(f) for f in args.frames.split(",")):
        target.start(prompt, 8 * args.turns * len(variants) + 64)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.turns):
            for name, change in variants.items():
                fast.PackedLinear.__call__ = change.get("call", call)
                skinny.rms_norm = change.get("norm", norm)
                fast.ATTEND_FRAMES = change.get("attend", frames_limit)
                try:
                    times[name].extend(turn(T))
                finally:
                    fast.PackedLinear.__call__, skinny.rms_norm, fast.ATTEND_FRAMES = call, norm, frames_limit
        results[T] = {name: 1e3 * statistics.median(v) for name, v in times.items()}
        base = results[T]["as shipped"]
        print(f"{T} frame(s): " + ", ".join(f"{name} {ms:.2f} ms" + ("" if name == "as shipped" else f" (+{ms - base:.2f})")
                                          for name, ms in results[T].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "ms_per_forward": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
