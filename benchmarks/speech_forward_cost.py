"""What one verification forward costs on this machine, by the number of frames it checks.

Speculative decoding assumes a target forward over k + 1 frames costs about one over a single frame.
This measures it for the speech zoo: the median time of one ``SpeechTarget.forward`` (after a 40-frame
prefix, rolled back after each call) for 1..6 frames, for the target and the draft, and the matrix
product behind it (the target's 384 -> 2056 codebook heads) for 1..8 rows.

    python benchmarks/speech_forward_cost.py [--device cuda] [--json benchmarks/results/speech_forward_cost_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mmspec.bench import environment
from mmspec.loop import synchronizer
from mmspec.speech import api


def forward_ms(target, frames: int, repeats: int) -> float:
    """Median milliseconds of one forward over ``frames`` frames."""
    sync = synchronizer(target.device)
    device = target.device
    target.start(["Hello world."], 400)
    target.forward(torch.zeros(1, 40, target.num_codebooks, dtype=torch.long, device=device))  # a realistic cache
    x = torch.zeros(1, frames, target.num_codebooks, dtype=torch.long, device=device)
    times = []
    for i in range(repeats + 5):
        sync()
        t0 = time.perf_counter()
        target.forward(x)
        sync()
        if i >= 5:  # warm-up first
            times.append(time.perf_counter() - t0)
        target.keep(target.pos - frames)
    return 1e3 * statistics.median(times)


def linear_us(rows: int, d_in: int, d_out: int, repeats: int, device="cpu", dtype=torch.float32) -> float:
    """Median microseconds of ``F.linear`` on ``[rows, d_in]`` with a ``[d_out, d_in]`` weight."""
    w = torch.randn(d_out, d_in, device=device, dtype=dtype)
    x = torch.randn(rows, d_in, device=device, dtype=dtype)
    for _ in range(50):
        torch.nn.functional.linear(x, w)
    times, sync = [], synchronizer(device)
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.nn.functional.linear(x, w)
        sync()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the speech adapter's, cuda when available)")
    args = ap.parse_args()
    target, draft = api.load(api.MODALITY.default_target, device=args.device), api.load(api.MODALITY.default_draft, device=args.device)
    heads = target.model.heads.weight  # [K * V, H]
    result = {"environment": environment(), "device": str(target.device), "dtype": str(heads.dtype),
              "forward_ms": {}, "heads_linear_us": {}}
    print(f"{'frames':>6} {'target ms':>10} {'draft ms':>9}")
    for n in range(1, 7):
        t, d = forward_ms(target, n, args.repeats), forward_ms(draft, n, args.repeats)
        result["forward_ms"][n] = {"target": round(t, 2), "draft": round(d, 2)}
        print(f"{n:6d} {t:10.2f} {d:9.2f}")
    print(f"{'rows':>6} {'linear ' + str(tuple(heads.shape[::-1])) + ' us':>24}")
    for rows in (1, 2, 3, 5, 8):
        us = linear_us(rows, heads.shape[1], heads.shape[0], 20 * args.repeats, heads.device, heads.dtype)
        result["heads_linear_us"][rows] = round(us, 1)
        print(f"{rows:6d} {us:24.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
