"""Offline image zoo recipe: train and evaluate the "shapes" target, drafter, VQ tokenizer, classifier.

    python -m mmspec.image.recipe train --out image/zoo --device cuda --time-budget 400
    python -m mmspec.image.recipe train --out /tmp/zoo --quick            # ~1 CPU minute smoke run
    python -m mmspec.image.recipe evaluate --out image/zoo                # CPU, writes model cards

``train`` runs: data -> classifier -> VQ tokenizer -> encode data set -> AR target -> AR draft
(distilled from the target). Each stage gets a share of the remaining wall-clock budget, stops
cleanly when it runs out, and keeps resumable checkpoints in ``--ckpt-dir``. The zoo format is
documented in :mod:`mmspec.image.models`. Both commands use the folder ``--out`` names, by default
``./zoo-out/image`` in the working directory; the commands above (run from a checkout's root) rebuild the
shipped zoo, ``image/zoo``.
"""

from __future__ import annotations

import argparse

from mmspec.training import add_stage_options

from .evaluate import evaluate
from .train import train

DEFAULT_OUT = "zoo-out/image"  # in the working directory, never inside the installed package


def main(argv=None) -> None:
    """``train`` / ``evaluate`` entry point (``mmspec zoo train image`` forwards here)."""
    parser = argparse.ArgumentParser(prog="python -m mmspec.image.recipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the shapes zoo (VQ, target, draft, classifier)")
    add_stage_options(p, DEFAULT_OUT, "zoo folder (gets shapes/ and shapes-draft/)", None,
                      "wall-clock seconds for the whole run", "tiny sizes: a ~1 minute CPU smoke run")
    p.add_argument("--ckpt-dir", default=None, help="resumable checkpoints (default runs/image-zoo[-quick])")
    p.add_argument("--workers", type=int, default=None, help="data generation processes (default <= 8)")
    p.add_argument("--n-train", type=int, default=None, help="override the number of training images")
    e = sub.add_parser("evaluate", help="score a trained zoo and write its model cards")
    e.add_argument("--out", default=DEFAULT_OUT, help=f"zoo folder to evaluate (and write cards into; default {DEFAULT_OUT})")
    e.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    e.add_argument("--per-class", type=int, default=4, help="samples per class for each guidance scale")
    e.add_argument("--scales", default="1,2,3", help="guidance scales to sweep")
    e.add_argument("--n-heldout", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args)
    else:
        evaluate(args)

