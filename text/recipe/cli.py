"""Offline text zoo recipe: a ~23M-parameter Python-code Llama target and a ~2M drafter for it.

    python -m mmspec.text.recipe prepare  [--data .gpu/text]                     # CPU, minutes
    python -m mmspec.text.recipe train    --data .gpu/text --out text/zoo --device cuda --time-budget 400
    python -m mmspec.text.recipe evaluate --data .gpu/text --out text/zoo       # CPU, < 5 min
    python -m mmspec.text.recipe distill  --data .gpu/text --out text/zoo --device cuda --time-budget 330

`prepare` builds the corpus (standard library + a few permissive packages), a byte-level BPE tokenizer
and uint16 token arrays. `train` trains the target, then the drafter (pretraining on the corpus, then
distillation on the target's distribution, which is what raises agreement for speculation), inside one
wall-clock budget, and saves fp16 `save_pretrained` folders `code-target/` and `code-draft/`.
`evaluate` measures losses, greedy agreement and sample completions and writes the model cards.
`distill` retrains only the drafter against the saved target, trying a few drafter shapes, and keeps the
one that agrees with the target most.

Every command reads and writes the folder `--out` names, by default `./zoo-out/text` in the working
directory; the commands above (run from a checkout's root) rebuild the shipped zoo, `text/zoo`.
"""

from __future__ import annotations

import argparse

from mmspec.training import add_stage_options
from .data import DEFAULT_DATA, prepare
from .distill import distill
from .evaluate import evaluate
from .models import DRAFT_VARIANTS
from .train import train

DEFAULT_OUT = "zoo-out/text"  # in the working directory, never inside the installed package


def build_parser() -> argparse.ArgumentParser:
    """`prepare`, `train`, `distill`, `evaluate` subcommands."""
    ap = argparse.ArgumentParser(prog="mmspec.text.recipe", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="corpus + tokenizer + token arrays (CPU)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--val-permille", type=int, default=40, help="held-out files per 1000 (by hash)")
    p.add_argument("--max-train-tokens", type=int, default=12_500_000)
    p.add_argument("--package-bytes", type=int, default=5_000_000,
                   help="source bytes per permissive package (0: standard library only)")
    t = sub.add_parser("train", help="train target + drafter (GPU; CPU fallback)")
    t.add_argument("--data", default=DEFAULT_DATA)
    add_stage_options(t, DEFAULT_OUT, "folder for code-target/ and code-draft/", 400.0,
                      "wall-clock seconds, whole command", "tiny models, ~20 steps each (smoke test)")
    t.add_argument("--target-frac", type=float, default=0.65, help="share of the budget for the target")
    _run_options(t, "OUT/ckpt", "the models")
    d = sub.add_parser("distill", help="retrain only the drafter against the saved target (GPU; CPU fallback)")
    d.add_argument("--data", default=DEFAULT_DATA)
    add_stage_options(d, DEFAULT_OUT, "zoo folder holding code-target/ (code-draft/ is replaced)", 330.0,
                      "wall-clock seconds, all variants", "~10 steps per stage (smoke test)")
    d.add_argument("--variants", default=DRAFT_VARIANTS,
                   help="comma-separated LAYERSxHIDDENxFFN drafters to train; the best agreement is kept")
    d.add_argument("--pretrain-frac", type=float, default=0.3,
                   help="share of each variant's time for corpus pretraining before distillation")
    _run_options(d, "OUT/ckpt-distill", "the drafter")
    e = sub.add_parser("evaluate", help="losses, agreement, samples, model cards (CPU)")
    e.add_argument("--data", default=DEFAULT_DATA)
    e.add_argument("--out", default=DEFAULT_OUT, help=f"zoo folder to score and write cards into (default {DEFAULT_OUT})")
    e.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    e.add_argument("--max-tokens", type=int, default=24_576, help="held-out tokens to score")
    e.add_argument("--new-tokens", type=int, default=64)
    return ap


def _run_options(p, ckpt: str, models: str) -> None:
    """Batch, context, compile, resume and seed options of `train` and `distill`."""
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--compile", action="store_true", help=f"torch.compile {models} (off by default)")
    p.add_argument("--no-resume", action="store_true", help=f"ignore checkpoints in {ckpt}")
    p.add_argument("--keep-ckpt", action="store_true", help=f"keep {ckpt} after a completed run")
    p.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    """Entry point (also behind `mmspec zoo train text`)."""
    args = build_parser().parse_args(argv)
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "train":
        train(args)
    elif args.cmd == "distill":
        distill(args)
    else:
        evaluate(args)
    return 0

