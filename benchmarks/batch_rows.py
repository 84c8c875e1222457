"""Per-row commits in a batch, machine-independent: target forwards and per-row mean accepted at B = 1, 2, 4, 8.

Eight suite prompts run in groups of B (8 / B generations per B). For each group: the target forwards it takes
against the most any of its rows needs decoded alone, and the per-row mean accepted frames per forward; under
greedy decoding also whether every row equals that row alone. No timing: run it anywhere.

    python benchmarks/batch_rows.py text prompt-lookup,heads --max-new-tokens 64 --k 8
    python benchmarks/batch_rows.py image jacobi,heads --max-new-tokens 64 --k 8 --temperature 1
    python benchmarks/batch_rows.py speech heads --max-new-tokens 48 --k 4
"""
from __future__ import annotations

import argparse
import json

from mmspec import methods as named
from mmspec import modalities
from mmspec.types import Sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("drafters", help="comma-separated drafter names")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="> 0: the reproducible rule")
    parser.add_argument("--init", default="random", help="Jacobi init")
    args = parser.parse_args()
    modality = modalities.get(args.suite)
    target = modality.load(modality.default_target)
    prompts = modality.suite.prompts(8, target)
    rule = "greedy" if args.temperature == 0 else "reproducible"

    def run(drafter, group):
        return named.run(modality, target, group, drafter=drafter, rule=rule, k=args.k, init=args.init,
                         max_new_tokens=args.max_new_tokens, sampling=Sampling(temperature=args.temperature))

    for drafter in args.drafters.split(","):
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


if __name__ == "__main__":
    main()
