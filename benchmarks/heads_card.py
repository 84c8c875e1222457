"""Write a zoo self-drafter's model card from a ``mmspec bench`` run, and print the heads-against-draft-model
row of BENCHMARKS.md (agreement, mean accepted, speedup, training cost).

    mmspec bench --suite text --methods "model,heads" --out bench/heads-text
    python benchmarks/heads_card.py --bench bench/heads-text/results.json --heads text/zoo/code-heads \
        --method heads --draft-method model --train-command "mmspec heads train --target zoo:code-target ..."
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmspec.heads.card import write_card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, help="results.json of a mmspec bench run that holds the heads method")
    p.add_argument("--heads", required=True, help="the heads folder to write README.md into")
    p.add_argument("--method", required=True, help="the bench label of the heads method")
    p.add_argument("--draft-method", default=None, help="the bench label of the draft-model method to compare")
    p.add_argument("--also", action="append", default=[], metavar="LABEL",
                   help="another method of the run to list on the card (repeatable), e.g. a cascade with the heads")
    p.add_argument("--train-command", default="", help="the command that trained the heads")
    p.add_argument("--hardware", default=None, help="a readable name of the machine (default: from the bench run)")
    args = p.parse_args(argv)
    report = json.loads(Path(args.bench).read_text())
    (suite,) = report["suites"]
    rows = {m["method"]: m for m in suite["methods"]}
    for label in [args.method, args.draft_method, *args.also]:
        if label and label not in rows:
            raise SystemExit(f"no method {label!r} in {args.bench}; there are: {', '.join(rows)}")
    env = report["environment"]
    hardware = f"{args.hardware or env['processor']} ({env['cpu_count']} cores, torch {env['torch_threads']} threads)"

    def measured(m: dict) -> dict:
        return {"mean_accepted": m["mean_accepted"], "speedup": m["speedup"], "rule": m["rule"],
                "lossless": m.get("lossless", True)}

    out = {**measured(rows[args.method]), "hardware": hardware, "command": report.get("command") or "mmspec bench"}
    if args.draft_method:
        out["draft_model"] = measured(rows[args.draft_method])
    out["also"] = {label: measured(rows[label]) for label in args.also}
    card = write_card(args.heads, out, args.train_command)
    config = json.loads((Path(args.heads) / "config.json").read_text())
    t = config["training"]
    print(f"wrote {card}")
    print("| modality | drafter | held-out agreement | mean accepted | speedup | training |")
    print(f"| {suite['suite']} | heads ({config['kind']}) | {t.get('held_out_top1')} | {out['mean_accepted']:.2f} | "
          f"{out['speedup']:.2f}x | {t.get('train_seconds')} s on {t.get('hardware')} |")
    if args.draft_method:
        d = out["draft_model"]
        print(f"| {suite['suite']} | draft model | see its card | {d['mean_accepted']:.2f} | {d['speedup']:.2f}x | "
              "zoo recipe (GPU) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
