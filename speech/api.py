"""The speech modality's interface (``mmspec.modalities``): the zoo's codec LM or Hugging Face MusicGen.

Targets: ``zoo:NAME`` or a recipe folder (``mmspec_speech.json``) -> ``SpeechTarget``; a MusicGen
folder or hub id (``config.json`` with ``model_type == "musicgen"``) -> ``MusicgenTarget``. Outputs are
``Audio`` values (waveform and sample rate; ``save`` writes 16-bit mono WAV). A frame is one step of K
codec codes; the per-codebook ``codec-lookup`` drafter and init and the LOSSY ``relaxed`` rule are added.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from mmspec import accept
from mmspec.bench import Method, Suite
from mmspec.modalities import Modality

from .display import DISPLAY
from .drafters import CodecLookupDrafter, lookup_init
from .relaxed import relaxed_rule
from .target import META_NAME, ZOO, SpeechTarget, texts_of

SENTENCES = ("Hello world.", "The quick brown fox jumps over the lazy dog.", "Speculative decoding makes speech faster.",
             "Open the file and read every line.", "Tomorrow will be a sunny day.", "Please call me back at noon.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speech")
    group.add_argument("--voice", default=None, help="zoo voice name or index (default: the first voice)")
    group.add_argument("--dtype", default=None, help="float32 (CPU default), float16 or bfloat16")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--guidance-scale", type=float, default=None,
                       help="MusicGen classifier-free guidance (default: the model's own generation config)")
    group.add_argument("--beta", type=float, default=0.1, help="rule relaxed (LOSSY): tolerance on codebooks >= 1")


def options(args: argparse.Namespace) -> dict:
    voice = getattr(args, "voice", None)
    if isinstance(voice, str) and voice.isdigit():
        voice = int(voice)
    opts = {"voice": voice, "dtype": getattr(args, "dtype", None), "device": getattr(args, "device", None),
            "guidance_scale": getattr(args, "guidance_scale", None), "beta": getattr(args, "beta", None)}
    return {key: value for key, value in opts.items() if value is not None}


def _is_musicgen(name: str) -> bool:
    config = Path(os.path.expanduser(name)) / "config.json"
    if config.exists():
        return json.loads(config.read_text()).get("model_type") == "musicgen"
    return "musicgen" in name.lower() and not name.startswith("zoo:")


def load(name: str, *, voice=None, dtype=None, device=None, guidance_scale: float | None = None, fast=None, **_):
    """``zoo:NAME`` / recipe folder -> ``SpeechTarget``; MusicGen folder or hub id -> ``MusicgenTarget``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"speech model must be zoo:NAME, a folder or a MusicGen hub id, got {name!r}")
    if not name.startswith("zoo:") and not (Path(os.path.expanduser(name)) / META_NAME).exists() and _is_musicgen(name):
        from .musicgen import MusicgenTarget

        if voice is not None:
            raise ValueError("MusicGen has no voices; drop --voice")
        return MusicgenTarget.from_pretrained(name, guidance_scale=guidance_scale, dtype=dtype, device=device, fast=fast)
    if guidance_scale is not None:
        raise ValueError("the zoo speech model has no guidance; --guidance-scale is for MusicGen")
    return SpeechTarget.from_pretrained(name, voice=voice, dtype=dtype, device=device, fast=fast)


def prompts(prompt, batch: int) -> list[str]:
    texts_of(prompt)  # empty text -> ValueError
    return [prompt] * batch


def sentences(n: int, target) -> list[str]:
    return list((SENTENCES * n)[:n])


def mel_distance(target, prompts: list, outputs: list, baseline: list) -> float:
    """Mean log-mel L1 distance to the autoregressive output of the same prompt and seed."""
    from .metrics import log_mel

    dists = []
    for out, ref in zip(outputs, baseline):
        a, b = log_mel(out.numpy(), out.sample_rate), log_mel(ref.numpy(), ref.sample_rate)
        n = max(a.shape[-1], b.shape[-1])  # the shorter one is padded with silence: length differences count
        a, b = (torch.nn.functional.pad(x, (0, n - x.shape[-1]), value=math.log(1e-5)) for x in (a, b))
        dists.append(float((a - b).abs().mean()))
    return sum(dists) / len(dists)


RELAXED = accept.RuleSpec(
    "relaxed", lossless=False, build=lambda target=None, beta=0.1: relaxed_rule(beta), options=("beta",),
    bound="total variation <= (K - 1) * beta per frame from the target; the coarse codebook exact (--beta)")

SUITE = Suite(
    prompts=sentences, n_prompts=(6, 2), max_new=(153, 60), k=4,
    methods=(
        # Greedy (the speed bar: identical output to greedy autoregressive decoding)
        Method("model / greedy", "model", "greedy", 0.0),
        Method("model / greedy k=2", "model", "greedy", 0.0, k=2, quick=False),
        Method("jacobi / greedy", "jacobi", "greedy", 0.0),
        # the zoo's self-drafter (zoo:speech-heads); greedy, 2 drafted frames measured faster than 4 (BENCHMARKS.md,
        # "Session 9": each drafted frame costs a pass of the EAGLE layer, about a quarter of this small target's forward)
        Method("heads / greedy", "heads", "greedy", 0.0, k=2),
        Method("heads / greedy k=4", "heads", "greedy", 0.0, k=4, quick=False),
        Method("codec-lookup / greedy", "codec-lookup", "greedy", 0.0, quick=False),
        Method("model tree=8 / greedy", "model", "greedy", 0.0, tree=8, quick=False),
        Method("codec-lookup tree=8 / greedy", "codec-lookup", "greedy", 0.0, tree=8, quick=False),
        # Sampling at T = 1
        Method("model / speculative", "model", "speculative", 1.0),
        Method("model / joint", "model", "joint", 1.0, quick=False),  # whole frames tested jointly
        Method("jacobi / speculative", "jacobi", "speculative", 1.0, quick=False),
        Method("codec-lookup / speculative", "codec-lookup", "speculative", 1.0, quick=False),
        Method("model / relaxed b=0.1", "model", "relaxed", 1.0, options=(("beta", 0.1),)),
        Method("heads / speculative", "heads", "speculative", 1.0, k=4),
        Method("heads / relaxed b=0.1", "heads", "relaxed", 1.0, k=4, options=(("beta", 0.1),), quick=False),
        Method("codec-lookup / relaxed b=0.1", "codec-lookup", "relaxed", 1.0, options=(("beta", 0.1),), quick=False),
    ),
    quality=mel_distance, quality_name="mel_distance_to_baseline",
)

def heads_prompts(target, held_out: bool):
    """A self-drafter learns from the target's samples of the speech recipe's sentences (the standard
    library's docstrings; held out: its validation split), cycled."""
    import itertools

    from .recipe.data import split_of, stdlib_sentences

    chosen = [s for s in stdlib_sentences() if (split_of(s) == "valid") == held_out]
    return itertools.cycle(chosen)


MODALITY = Modality(
    name="speech", title="Speech", unit="frames",
    default_target="zoo:speech", default_draft="zoo:speech-draft",
    examples=("Hello world", "The quick brown fox jumps over the lazy dog.", "Please call me back at noon."),
    load=load, prompts=prompts, max_new_tokens=153, max_new_limit=400,  # 153 = 3 s at 50 frames/s + K - 1 closing steps
    add_arguments=add_arguments, options=options,
    inits={"codec-lookup": lookup_init},
    drafters={"codec-lookup": lambda target, tree=None, width=2, **opts: CodecLookupDrafter(tree=tree, width=width)},  # training-free, per codebook
    rules={"relaxed": RELAXED}, suite=SUITE, extension=".wav", suffixes=(".wav",),  # Audio.save writes WAV
    compare=("prompt-lookup", "jacobi", "lookahead", "model", "heads"),
    display=DISPLAY, default_heads="zoo:speech-heads", zoo=ZOO, heads_prompts=heads_prompts,
    notes="Text-to-speech codec LM from the offline zoo (4 codebooks, 50 frames/s), or MusicGen by folder or hub id.",
)
