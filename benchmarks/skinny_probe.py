"""The fast path's two product kernels side by side: all products of a decoder the text zoo target's size
(8 layers of q/k/v, o, gate/up, down at hidden 448 and MLP 1216, plus the 8192-row output head; random weights,
distinct per product so they stream from memory) for M rows, with ``mmspec.skinny`` and with oneDNN's prepacked
product, in one process, median of repeats. The row limit up to which the fast path uses the skinny kernel
(``mmspec.fast.SKINNY_ROWS``) rests on this.

    python benchmarks/skinny_probe.py [--rows 1,2,4,5,8,9,12,16,17,24,32,48,64,96,128] [--repeats 30]
"""
from __future__ import annotations

import argparse

import torch

from mmspec import skinny
from mmspec.fast import PackedLinear

from forward_profile import median_ms  # noqa: E402 (a script beside this one)

SHAPES = [(1344, 448), (448, 448), (2432, 448), (448, 1216)] * 8 + [(8192, 448)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,5,8,9,12,16,17,24,32,48,64,96,128")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if skinny.library() is None:
        raise SystemExit(f"no skinny kernel here: {skinny.reason()}")
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.02 for o, i in SHAPES]
    kernels = [skinny.SkinnyWeight(w) for w in weights]
    packed = [PackedLinear([w]) for w in weights]
    for p in packed:
        p.skinny = None  # the fast path's oneDNN product, as it runs where the kernel is not built

    print(f"{len(SHAPES)} products, {sum(o * i for o, i in SHAPES) * 4 / 1e6:.0f} MB of float32 weights, "
          f"{torch.get_num_threads()} threads")
    for M in (int(r) for r in args.rows.split(",")):
        xs = [torch.randn(M, i) for _, i in SHAPES]
        a = median_ms(lambda: [k(x) for k, x in zip(kernels, xs)], args.repeats)
        b = median_ms(lambda: [p(x) for p, x in zip(packed, xs)], args.repeats)
        print(f"rows {M:4d}: skinny {a:6.2f} ms   oneDNN prepacked {b:6.2f} ms   oneDNN / skinny {b / a:.2f}")


if __name__ == "__main__":
    main()
