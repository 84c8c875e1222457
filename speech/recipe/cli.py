"""Offline speech zoo recipe: espeak-ng data -> small EnCodec -> codec LMs (target + draft).

Subcommands (``python -m mmspec.speech.recipe <cmd> --help``):

* ``prepare``  (CPU, needs ``espeak-ng``): synthesize short English utterances from first sentences of
  Python stdlib docstrings with a few espeak voices, 16 kHz, stored as 8-bit mu-law in a compressed
  ``audio.mulaw.xz`` + ``index.json`` (transcripts, voices, 5% validation split) under ``--data``.
* ``train``    (GPU or CPU): 1. codec (waveform L1 + multi-resolution mel L1 + commitment),
  2. encode every utterance to codes, 3. target LM, 4. draft LM (+ distillation on target logits when
  time remains). ``--time-budget`` caps the whole run; checkpoints make it resumable.
* ``evaluate`` (CPU): codec mel distance and SI-SNR, LM validation losses, 3 utterances sampled by
  mmspec's own loop (``SpeechTarget``) written as WAVs, model cards.
* ``distill``  (CPU or GPU): the draft trained on the target's own greedy output (no audio needed).

``train`` writes, and ``evaluate`` reads and writes, the folder ``--out`` / ``--zoo`` names, by default
``./zoo-out/speech`` in the working directory; ``distill`` reads the shipped zoo's target (``--zoo``) and
writes ``<--out>/speech-draft`` (default the same ``./zoo-out/speech``). The data default is
``./.gpu/speech``. To rebuild the shipped zoo, from a checkout's root: ``prepare``, ``train --out
speech/zoo``, ``evaluate --zoo speech/zoo`` and ``distill --out speech/zoo``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmspec.training import add_stage_options

from .data import DEFAULT_DATA, prepare
from .distill import distill
from .evaluate import evaluate
from .train import train

DEFAULT_OUT = Path("zoo-out/speech")  # in the working directory, never inside the installed package
SHIPPED_ZOO = Path(__file__).resolve().parent.parent / "zoo"  # read only: the target distill trains against


def build_parser() -> argparse.ArgumentParser:
    """``prepare``, ``train``, ``evaluate`` and ``distill`` subcommands."""
    parser = argparse.ArgumentParser(prog="mmspec.speech.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="synthesize the espeak-ng data set (CPU)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--max-seconds", type=float, default=2600.0,
                   help="audio budget in seconds (lzma mu-law: about 11 kB/s)")
    p.add_argument("--max-utterances", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train codec, target LM and draft LM (GPU or CPU)")
    t.add_argument("--data", default=str(DEFAULT_DATA))
    add_stage_options(t, str(DEFAULT_OUT), "folder for speech/ and speech-draft/", None,
                      "seconds for the whole run (400; quick 60)", "tiny models and data: a CPU smoke test")
    t.add_argument("--keep-checkpoints", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="metrics, samples and model cards (CPU)")
    e.add_argument("--data", default=str(DEFAULT_DATA))
    e.add_argument("--zoo", default=str(DEFAULT_OUT), help=f"zoo folder to score and write cards into (default {DEFAULT_OUT})")
    e.add_argument("--max-valid", type=int, default=24)
    e.add_argument("--samples", type=int, default=3)
    e.add_argument("--top-k", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    _add_distill(sub)
    return parser


def _add_distill(sub) -> None:
    d = sub.add_parser("distill", help="distil the draft on the target's own greedy output (CPU or GPU)")
    d.add_argument("--zoo", default=str(SHIPPED_ZOO), help="folder holding speech/ and speech-draft/ (read; default "
                   "the shipped zoo)")
    d.add_argument("--out", default=str(DEFAULT_OUT), help=f"writes <out>/speech-draft (default {DEFAULT_OUT})")
    d.add_argument("--init", default=str(SHIPPED_ZOO / "speech-draft" / "lm"),
                   help="draft LM to start from; '' trains a fresh one of --hidden/--layers/--heads")
    d.add_argument("--grow-layers", type=int, default=None,
                   help="grow the --init draft to this many layers (new layers start as the identity)")
    d.add_argument("--hidden", type=int, default=128)
    d.add_argument("--layers", type=int, default=1)
    d.add_argument("--heads", type=int, default=4)
    d.add_argument("--max-texts", type=int, default=None)
    d.add_argument("--gen-batch", type=int, default=64)
    d.add_argument("--minutes", type=float, default=30.0, help="training time (resumable)")
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--kl", action="store_true", help="also KL to the target's logits (slower on a CPU)")
    d.add_argument("--eval-every", type=int, default=200)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    d.add_argument("--keep-checkpoints", action="store_true")
    d.add_argument("--seed", type=int, default=0)


def main(argv=None) -> None:
    """Entry point: ``prepare`` / ``train`` / ``evaluate`` / ``distill``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "train" and args.time_budget is None:
        args.time_budget = 60.0 if args.quick else 400.0
    {"prepare": prepare, "train": train, "evaluate": evaluate, "distill": distill}[args.cmd](args)

