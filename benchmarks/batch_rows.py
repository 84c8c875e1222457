"""Per-row commits in a batch, machine-independent: target forwards and per-row mean accepted at B = 1, 2, 4, 8.

Eight suite prompts run in groups of B (8 / B generations per B). For each group: the target forwards it takes
against the most any of its rows needs decoded alone, and the per-row mean accepted frames per forward; under
greedy decoding also whether every row equals that row alone. No timing: run it anywhere.

    python benchmarks/batch_rows.py text prompt-lookup,heads --max-new-tokens 64 --k 8
    python benchmarks/batch_rows.py image jacobi,heads --max-new-tokens 64 --k 8 --temperature 1
    python benchmarks/batch_rows.py speech heads --max-new-tokens 48 --k 4

``--compaction``: rows that have ended leave the batch (``mmspec.compaction``). The eight prompts run as one batch
of 8, with compaction and with ``compact=False``: target forwards (the prefill included), the sum over verify
forwards of rows x frames the target scored (``mmspec.testing.CountedTarget``; a guided image target runs each
row twice inside, both ways alike), the verify forwards that ran fewer than 8 rows ("narrow"), and whether
every row's output is the same both ways.

    python benchmarks/batch_rows.py text prompt-lookup,heads --max-new-tokens 64 --k 8 --compaction
    python benchmarks/batch_rows.py image jacobi,heads --max-new-tokens 64 --k 8 --temperature 1 --init above --compaction
    python benchmarks/batch_rows.py speech heads --max-new-tokens 48 --k 4 --compaction
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
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="> 0: the reproducible rule")
    parser.add_argument("--init", default="random", help="Jacobi init")
    parser.add_argument("--compaction", action="store_true", help="one batch of 8, with and without compaction")
    args = parser.parse_args()
    modality = modalities.get(args.suite)
    target = CountedTarget(modality.load(modality.default_target))
    prompts = modality.suite.prompts(8, target)
    rule = "greedy" if args.temperature == 0 else "reproducible"

    def run(drafter, group, compact=True):
        return named.run(modality, target, group, drafter=drafter, rule=rule, k=args.k, init=args.init,
                         max_new_tokens=args.max_new_tokens, sampling=Sampling(temperature=args.temperature),
                         compact=compact)

    for drafter in args.drafters.split(","):
        if args.compaction:
            compaction(args.suite, drafter, rule, prompts, target, run)
            continue
        alone = [run(drafter, [p]) for p in prompts]
        for B in (1, 2, 4, 8):
            groups = [list(range(i, i + B)) for i in range(0, len(prompts), B)]
            gens = [run(drafter, [prompts[i] for i in g]) for g in groups]
            forwards = sum(g.stats["steps"] for g in gens)
            most = sum(max(alone[i].stats["steps"] for i in g) for g in groups)
            accepted = sum(g.stats["mean_accepted"] * len(grp) for g, grp in zip(gens, groups)) / len(prompts)
            same = None if args.temperature else all(
                g.token_ids()[j] == alone[i].token_ids()[0] for g, grp in zip(gens, groups) for j, i in enumerate(grp))
            print(json.dumps({"suite": args.suite, "drafter": drafter, "B": B, "forwards": forwards,
                              "most_alone": most, "ratio": round(forwards / most, 3),
                              "mean_accepted_per_row": round(accepted, 3), "same_as_alone": same}), flush=True)


def compaction(suite: str, drafter: str, rule: str, prompts: list, target: CountedTarget, run) -> None:
    """One batch of all ``prompts`` with compaction and without: forwards and rows x frames verified, as JSON."""
    gens, shapes = [], []
    for compact in (True, False):
        gens.append(run(drafter, prompts, compact))
        shapes.append(list(target.shapes))  # (B, T) of every verify forward
    work = [sum(b * t for b, t in s) for s in shapes]
    print(json.dumps({"suite": suite, "drafter": drafter, "rule": rule, "B": len(prompts),
                      "forwards": [g.stats["steps"] for g in gens], "rows_x_frames": work,
                      "work_ratio": round(work[0] / work[1], 3),
                      "narrow_forwards": sum(b < len(prompts) for b, _ in shapes[0]),
                      "same_outputs": gens[0].token_ids() == gens[1].token_ids()}), flush=True)


if __name__ == "__main__":
    main()
