"""What the CLI, the app and the benchmarks need to drive the image modality (the modality interface).

Same names as ``mmspec.text.api``: ``DEFAULT_TARGET``, ``DEFAULT_DRAFT``, ``DEFAULT_PROMPT``,
``DEFAULT_MAX_NEW``, ``INITS``, ``add_arguments``, ``options``, ``load``, ``prompts``, ``save``,
``json_extra``; plus ``RULES`` (accept rules that need the loaded target: ``lantern``) and
``make_rule(name, target, **options)``.

``load`` accepts ``zoo:NAME`` / a folder with ``mmspec_image.json`` (mmspec's own class-conditional
model) or a Janus folder / hub id (``JanusForConditionalGeneration``, text prompts).
"""
from __future__ import annotations

import argparse
import os

from mmspec.files import numbered

from .inits import SpatialInit
from .target import META_FILE, ImageTarget, resolve

DEFAULT_TARGET = "zoo:shapes"
DEFAULT_DRAFT = "zoo:shapes-draft"
DEFAULT_PROMPT = "red ring"
DEFAULT_MAX_NEW = 64  # the zoo's 8 x 8 grid; a target stops at its own full grid anyway
INITS: dict = {"left": SpatialInit("left"), "above": SpatialInit("above")}  # JacobiDrafter binds them to the grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image")
    group.add_argument("--cfg", type=float, default=None,
                       help="classifier-free guidance scale, >= 0; 1 = unguided (default: the model's, mmspec_image.json)")
    group.add_argument("--cfg-interval", default=None,
                       help="apply guidance only for grid fractions LO,HI (e.g. 0,0.5); default: everywhere")
    group.add_argument("--image-size", type=int, default=None, help="expected image size in pixels (checked)")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--dtype", default=None, help="float32 (CPU default), float16 (CUDA default), bfloat16")
    group.add_argument("--lantern-delta", type=float, default=0.1, help="LANTERN: per-step TV bound delta")
    group.add_argument("--lantern-k", type=int, default=1000, help="LANTERN: neighbours per code")


def _interval(text):
    if text is None or isinstance(text, (tuple, list)):
        return text
    try:
        lo, hi = (float(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"--cfg-interval must be LO,HI grid fractions such as 0,0.5; got {text!r}") from None
    return (lo, hi)


def options(args: argparse.Namespace) -> dict:
    return {
        "cfg_scale": getattr(args, "cfg", None),
        "cfg_interval": _interval(getattr(args, "cfg_interval", None)),
        "image_size": getattr(args, "image_size", None),
        "device": getattr(args, "device", None),
        "dtype": getattr(args, "dtype", None),
        "lantern_delta": getattr(args, "lantern_delta", 0.1),
        "lantern_k": getattr(args, "lantern_k", 1000),
    }


def load(name: str, **opts):
    """An ``ImageTarget`` (mmspec image folder / ``zoo:NAME``) or a ``JanusTarget`` (anything else)."""
    opts = {k: v for k, v in opts.items() if not k.startswith("lantern_")}
    path = resolve(name)
    if os.path.exists(os.path.join(path, META_FILE)):
        target = ImageTarget.from_pretrained(path, **opts)
    else:
        from .janus import JanusTarget

        opts.pop("image_size", None)
        target = JanusTarget.from_pretrained(path, **opts)
    return target  # spatial inits learn the grid width through JacobiDrafter's bind hook


def prompts(prompt, batch: int, **opts) -> list:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a class name such as 'red ring' (or, for Janus, a text prompt)")
    return [prompt] * batch


def make_rule(name: str, target, **opts):
    """Accept rules that need the loaded target (the VQ codebook): ``lantern``."""
    if name != "lantern":
        raise ValueError(f"unknown image rule {name!r}; allowed: {', '.join(RULES)}")
    from .lantern import lantern_rule, neighbours_for

    return lantern_rule(neighbours_for(target, opts.get("lantern_k", 1000)), delta=opts.get("lantern_delta", 0.1))


RULES = {"lantern": make_rule}
LOSSLESS = {"lantern": False}


def save(generation, out: str | None) -> list[str]:
    """Write one PNG per row: ``out`` for one image, ``stem_0.png, stem_1.png ...`` for a batch."""
    if not out:
        generation.files = []
        return []
    paths = numbered(out, len(generation.outputs))
    for path, image in zip(paths, generation.outputs):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path)
    generation.files = paths
    return paths


def json_extra(generation) -> dict:
    sizes = [list(im.size) for im in (generation.outputs or [])]
    return {"files": getattr(generation, "files", []), "image_sizes": sizes}
