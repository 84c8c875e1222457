"""The image modality's interface (``mmspec.modalities``): mmspec's class-conditional zoo model or Janus.

``load`` accepts ``zoo:NAME`` / a folder with ``mmspec_image.json`` (mmspec's own class-conditional
model) or a Janus folder / hub id (``JanusForConditionalGeneration``, text prompts). Outputs are
``PIL.Image``s; the LOSSY ``lantern`` rule and the spatial Jacobi inits ``left`` / ``above`` are added.
"""
from __future__ import annotations

import argparse
import os

from mmspec import accept
from mmspec.bench import Method, Suite
from mmspec.modalities import Modality
from mmspec.renamed import RenamedOption, check_keywords

from .display import DISPLAY
from .inits import SpatialInit
from .target import META_FILE, ZOO, resolve

LOAD_OPTIONS = ("guidance_scale", "guidance_interval", "image_size", "device", "dtype", "fast")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image")
    group.add_argument("--guidance-scale", type=float, default=None,
                       help="classifier-free guidance scale, >= 0; 1 = unguided (default: the model's own)")
    group.add_argument("--guidance-interval", default=None,
                       help="guide only for grid fractions LO,HI (e.g. 0,0.5); default: everywhere")
    group.add_argument("--cfg", action=RenamedOption)  # renamed in 0.2.0: an error naming the new option
    group.add_argument("--cfg-interval", action=RenamedOption)
    group.add_argument("--image-size", type=int, default=None, help="expected image size in pixels (checked)")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--dtype", default=None, help="float32 (CPU default), float16, bfloat16")
    group.add_argument("--delta", type=float, default=0.1, help="rule lantern (LOSSY): per-token TV bound delta")
    group.add_argument("--neighbours", type=int, default=1000, help="rule lantern: codebook neighbours per code")
    group.add_argument("--lantern-cache", default=None, metavar="DIR",
                       help="rule lantern: folder for the computed neighbour tables (default: ~/.cache/mmspec/lantern)")


def interval(text):
    """``"LO,HI"`` -> ``(lo, hi)``; a pair or None as is."""
    if text is None or isinstance(text, (tuple, list)):
        return text
    try:
        lo, hi = (float(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval must be LO,HI grid fractions such as 0,0.5; got {text!r}") from None
    return (lo, hi)


def options(args: argparse.Namespace) -> dict:
    opts = {key: getattr(args, key, None) for key in (*LOAD_OPTIONS, "delta", "neighbours", "lantern_cache")}
    opts["guidance_interval"] = interval(opts["guidance_interval"])
    return {key: value for key, value in opts.items() if value is not None}


def load(name: str, **opts):
    """An ``ImageTarget`` (mmspec image folder / ``zoo:NAME``) or a ``JanusTarget`` (anything else)."""
    check_keywords(opts, "image options")
    opts = {k: v for k, v in opts.items() if k in LOAD_OPTIONS}
    path = resolve(name)
    if os.path.exists(os.path.join(path, META_FILE)):
        from .target import ImageTarget

        return ImageTarget.from_pretrained(path, **opts)
    from .janus import JanusTarget

    opts.pop("image_size", None)
    return JanusTarget.from_pretrained(path, **opts)


def prompts(prompt, batch: int) -> list:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a class name such as 'red ring' (or, for Janus, a text prompt), got {prompt!r}")
    return [prompt] * batch


def lantern(target, delta: float = 0.1, neighbours: int = 1000, lantern_cache: str | None = None):
    """The LOSSY LANTERN rule for ``target``'s VQ codebook (see ``mmspec.image.lantern``); its neighbour table is
    kept in the folder ``lantern_cache`` (default: the user's cache)."""
    from .lantern import lantern_rule, neighbours_for

    return lantern_rule(neighbours_for(target, neighbours, lantern_cache), delta=delta)


def class_prompts(n: int, target) -> list[str]:
    """``n`` class names spread over the target's classes (every k-th, so colours and shapes vary)."""
    names = list(getattr(target, "class_names", []))
    if not names:
        raise ValueError("this image target has no class names; pass a prompt set for text-prompted models")
    step = max(1, len(names) // n)
    return [names[(i * step + i // max(1, len(names) // step)) % len(names)] for i in range(n)]


def class_accuracy(target, prompts: list, outputs: list, baseline: list) -> float | None:
    """Fraction of generated images the zoo classifier assigns to the prompted class (None: no classifier)."""
    from .models import classify_images

    pred = classify_images(target, outputs)
    if pred is None:
        return None
    want = [target.class_names.index(" ".join(p.lower().split())) for p in prompts]
    return sum(int(a == b) for a, b in zip(pred, want)) / len(want)


LANTERN = accept.RuleSpec(
    "lantern", lossless=False, build=lantern, options=("delta", "neighbours", "lantern_cache"),
    bound="relaxed target within total variation delta of p per drafted token (--delta, default 0.1)")

SUITE = Suite(
    prompts=class_prompts, n_prompts=(8, 2), max_new=(64, 64), k=16,
    methods=(
        Method("jacobi", "jacobi"),
        Method("sjd (init random)", "jacobi", "speculative", 1.0, "random"),
        Method("sjd (init left)", "jacobi", "speculative", 1.0, "left"),
        Method("sjd (init above)", "jacobi", "speculative", 1.0, "above", quick=False),
        # coupled Jacobi drafts (MC-SJD) and SJD-PAC proactive trees: exact. Window 24 measured fastest (BENCHMARKS.md,
        # session 8: 16 / 24 / 32 -> 1.58x / 1.55x / 1.18x at 2.88 / 3.32 / 2.98 codes per forward)
        Method("coupled (init above)", "coupled", "speculative", 1.0, "above", k=24),
        Method("coupled k=16 (init above)", "coupled", "speculative", 1.0, "above", k=16, quick=False),
        Method("coupled k=32 (init above)", "coupled", "speculative", 1.0, "above", k=32, quick=False),
        Method("coupled-gumbel (init above)", "coupled-gumbel", "speculative", 1.0, "above", k=32, quick=False),
        Method("proactive (init above)", "proactive", "speculative", 1.0, "above", k=32, quick=False),
        Method("model / speculative", "model", "speculative", 1.0, k=4),
        Method("lantern", "jacobi", "lantern", 1.0, "random"),
        Method("model tree=8 / speculative", "model", "speculative", 1.0, k=4, tree=8, quick=False),
        # self-drafting: the zoo's EAGLE layer on the target's conditional hidden state (zoo:shapes-heads)
        Method("heads / speculative", "heads", "speculative", 1.0, k=6),
        Method("heads+jacobi tree=16 / speculative", "heads+jacobi", "speculative", 1.0, k=8, tree=16, quick=False),
        Method("heads / lantern", "heads", "lantern", 1.0, k=6, quick=False),
    ),
    quality=class_accuracy, quality_name="class_accuracy",
)

def heads_prompts(target, held_out: bool):
    """A self-drafter learns from the target's samples of every class in turn (held out: other seeds)."""
    import itertools

    return itertools.cycle(target.class_names)


MODALITY = Modality(
    name="image", title="Image", unit="codes",
    default_target="zoo:shapes", default_draft="zoo:shapes-draft",
    examples=("red ring", "blue square", "green triangle"),
    load=load, prompts=prompts, max_new_tokens=None, max_new_limit=1024,
    add_arguments=add_arguments, options=options,
    inits={"left": SpatialInit("left"), "above": SpatialInit("above")},  # JacobiDrafter binds them to the grid
    rules={"lantern": LANTERN}, suite=SUITE, extension=".png",
    suffixes=(".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"),  # formats PIL saves
    compare=("prompt-lookup", "jacobi", "lookahead", "model", "heads"),
    display=DISPLAY, default_heads="zoo:shapes-heads", zoo=ZOO, heads_prompts=heads_prompts,
    notes="Class-conditional image-token model (8x8 VQ codes -> 32x32 pixels), or Janus by folder or hub id.",
)
