"""How the web app shows images: scaled up with nearest neighbours (the zoo's are 32 x 32), and while a
column streams the partial grid (codes not generated yet are decoded as the adapter pads them)."""
from __future__ import annotations

import torch

from mmspec.modalities import Display, Knob
from mmspec.types import PAD

SHOWN_SIZE = 192  # pixels on screen for small images


def enlarged(image, size: int = SHOWN_SIZE):
    """Small images scaled up to at least ``size`` pixels (nearest neighbours), for display only."""
    if not hasattr(image, "resize") or min(image.size) >= size:
        return image
    factor = -(-size // min(image.size))
    return image.resize((image.size[0] * factor, image.size[1] * factor), resample=0)  # 0 = nearest


def partial_grid(target, frames, from_draft):
    """The image of row 0's committed codes so far."""
    n = int((frames[:, 0] != PAD).sum())
    return enlarged(target.decode(frames[None, :n], torch.tensor([n]))[0]) if n else None


DISPLAY = Display(
    component="Image", value=enlarged, component_options={"type": "pil", "height": 200}, live=partial_grid,
    methods=(("jacobi", "auto"), ("heads", "auto"), ("model", "auto")),
    helps={
        "heads": "an EAGLE layer on the target's own hidden state (zoo:shapes-heads) guesses the next codes; "
                 "mixes with Jacobi guesses in one tree (heads+jacobi)",
        "jacobi": "the target refines a window of guessed codes in parallel: wins on flat, regular images "
                  "(init 'left' / 'above' start from the neighbouring codes)",
        "model": "a small draft image model guesses ahead: wins when the draft knows the class well",
        "lookahead": "code n-grams from the Jacobi guesses: wins on repeated textures",
    },
    examples=(
        ("green triangle", "jacobi", "a flat shape: Jacobi accepts about 2 codes per step with no draft model"),
        ("blue square", "model", "straight edges the draft model knows: the most codes per step"),
        ("red ring", "lookahead", "a repeated curve: lookahead is close to Jacobi"),
    ),
    init="left",
    knobs=(Knob("guidance_scale", "guidance scale (1 = unguided)", 0.0, 10.0, value=None, step=0.5),),
    choices=lambda target: list(getattr(target, "class_names", None) or []),
)
