"""Where a forward's time goes: the target's matrix products per row count, plain and prepacked, and an op profile.

Part 1 times every product of the text zoo target in model order (each decoder layer's q, k, v, o, gate, up, down,
then the output head; distinct weights, so they stream from memory as in a real forward) for M = 1..32 rows with
``F.linear`` (the eager path's kernel) and with the fast path's products (q/k/v and gate/up fused; ``packed_ms``: the
skinny kernel where ``mmspec.skinny`` builds, else oneDNN's prepacked product).
Part 2 profiles one-frame forwards of the target on both paths (torch.profiler, self CPU time by op). Part 3 times
one-frame and 8-frame forwards of both paths interleaved in one process (the fast path's speed-up over eager): first
forward by forward (each timed forward follows the other path's, cold), then in turns of 8 forwards back to back, as a
decode loop runs them (each turn's first forward untimed).

    python benchmarks/forward_profile.py [--target zoo:code-target] [--threads 2] [--json benchmarks/results/forward_profile.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mmspec.bench import environment
from mmspec.fast import PackedLinear
from mmspec.text import TextTarget

ROWS = (1, 2, 4, 8, 16, 32)


def products(model) -> tuple[list, list]:
    """The model's products in forward order: plain weights, and the fast path's fused packed ones."""
    plain, packed = [], []
    for layer in model.base_model.layers:
        a, m = layer.self_attn, layer.mlp
        plain += [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, m.gate_proj.weight,
                  m.up_proj.weight, m.down_proj.weight]
        packed += [PackedLinear([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), PackedLinear([a.o_proj.weight]),
                   PackedLinear([m.gate_proj.weight, m.up_proj.weight]), PackedLinear([m.down_proj.weight])]
    head = model.get_output_embeddings().weight
    return plain + [head], packed + [PackedLinear([head])]


def median_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_products(model, repeats: int) -> dict:
    plain, packed = products(model)
    out = {}
    with torch.inference_mode():
        for M in ROWS:
            inputs = {w.shape[1]: torch.randn(M, w.shape[1]) for w in plain}
            a = median_ms(lambda: [F.linear(inputs[w.shape[1]], w) for w in plain], repeats)
            b = median_ms(lambda: [p(inputs[p.in_features]) for p in packed], repeats)
            out[M] = {"plain_ms": round(a, 3), "packed_ms": round(b, 3)}
            print(f"M={M:3d} rows: every product F.linear {a:7.2f} ms   fast path {b:7.2f} ms", flush=True)
    return out


def profile(name: str, fast: bool, forwards: int = 20, top: int = 8) -> list:
    target = TextTarget.from_pretrained(name, fast=fast)
    target.start("def fibonacci(n):", 64)
    frame = torch.zeros(1, 1, 1, dtype=torch.long)
    for _ in range(5):
        target.forward(frame)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            target.forward(frame)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / forwards / 1e3
    rows = [{"op": e.key, "ms_per_forward": round(e.self_cpu_time_total / forwards / 1e3, 3)} for e in events]
    print(f"{target.forward_path} one-frame forward: {total:.2f} ms of self CPU time (profiled); top ops:")
    for r in rows:
        print(f"  {r['op'][:50]:50} {r['ms_per_forward']:7.3f} ms")
    return rows


def interleaved(name: str, repeats: int, block: int = 1) -> dict:
    """Median ms of 1- and 8-frame forwards on both paths, taking turns in this process.

    ``block`` 1: the paths alternate forward by forward, so every timed forward follows the other path's (its
    weights and cache are cold: a forward that never runs so in a decode loop). ``block`` B > 1: each turn runs B
    forwards back to back, as a decode loop does, and times all but the turn's first (the cold one)."""
    targets = {path: TextTarget.from_pretrained(name, fast=path == "fast") for path in ("eager", "fast")}
    for target in targets.values():
        target.start("def fibonacci(n):", 256)
        target.forward(torch.zeros(1, 32, 1, dtype=torch.long))
    times = {(path, n): [] for path in targets for n in (1, 8)}
    for i in range(5 + 3 * repeats):
        for (path, n), spent in times.items():
            frames, target = torch.zeros(1, n, 1, dtype=torch.long), targets[path]
            for j in range(block):
                t0 = time.perf_counter()
                target.forward(frames)
                if i >= 5 and (block == 1 or j > 0):
                    spent.append(time.perf_counter() - t0)
                target.keep(target.pos - n)
    ms = {f"{path}_{n}": round(1e3 * statistics.median(t), 3) for (path, n), t in times.items()}
    turns = "forward by forward" if block == 1 else f"in turns of {block} forwards"
    print(f"interleaved {turns}: one frame eager {ms['eager_1']:.2f} ms, fast {ms['fast_1']:.2f} ms "
          f"({ms['eager_1'] / ms['fast_1']:.2f}x); 8 frames eager {ms['eager_8']:.2f} ms, fast {ms['fast_8']:.2f} ms")
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="zoo:code-target")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = TextTarget.from_pretrained(args.target, fast=False)
    result = {"environment": environment(), "target": args.target, "products": time_products(target.model, args.repeats),
              "profile": {path: profile(args.target, path == "fast") for path in ("eager", "fast")},
              "interleaved": interleaved(args.target, args.repeats),
              "interleaved_turns_of_8": interleaved(args.target, max(2, args.repeats // 4), block=8)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
