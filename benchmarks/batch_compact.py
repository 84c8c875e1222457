"""Rows that have ended leave the batch (compaction), machine-independent: the work of a B = 8 batch with and without.

Eight suite prompts run as one batch of 8, once with compaction (the default) and once with ``compact=False``.
For each: target forwards (the prefill included), the sum over verify forwards of rows x frames the target
scored (``mmspec.testing.CountedTarget``; a guided image target runs each row twice inside, both ways alike), the
verify forwards that ran fewer than 8 rows, and whether every row's output is the same both ways. No timing: run
it anywhere (wall clock is for a quiet machine).

    python benchmarks/batch_compact.py text prompt-lookup,heads --max-new-tokens 64 --k 8
    python benchmarks/batch_compact.py image jacobi,heads --max-new-tokens 64 --k 8 --temperature 1 --init above
    python benchmarks/batch_compact.py speech heads --max-new-tokens 48 --k 4
"""
from __future__ import annotations

import argparse
import json

from mmspec import methods as named
from mmspec import modalities
from mmspec.testing import CountedTarget
from mmspec.types import Sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("drafters", help="comma-separated drafter names")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="> 0: the reproducible rule")
    parser.add_argument("--init", default="random", help="Jacobi init")
    args = parser.parse_args()
    modality = modalities.get(args.suite)
    target = CountedTarget(modality.load(modality.default_target))
    prompts = modality.suite.prompts(args.batch, target)
    rule = "greedy" if args.temperature == 0 else "reproducible"
    for drafter in args.drafters.split(","):
        runs = {}
        for compact in (True, False):
            gen = named.run(modality, target, prompts, drafter=drafter, rule=rule, k=args.k, init=args.init,
                            max_new_tokens=args.max_new_tokens, sampling=Sampling(temperature=args.temperature),
                            compact=compact)
            runs[compact] = (gen, list(target.shapes))
        (on, on_shapes), (off, off_shapes) = runs[True], runs[False]
        row = {"suite": args.suite, "drafter": drafter, "rule": rule, "B": len(prompts),
               "forwards": [on.stats["steps"], off.stats["steps"]],
               "rows_x_frames": [sum(b * t for b, t in on_shapes), sum(b * t for b, t in off_shapes)],
               "narrow_forwards": sum(b < len(prompts) for b, _ in on_shapes),
               "same_outputs": on.token_ids() == off.token_ids()}
        row["work_ratio"] = round(row["rows_x_frames"][0] / row["rows_x_frames"][1], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
