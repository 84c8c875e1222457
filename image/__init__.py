"""The image modality: autoregressive image-token targets (mmspec's class-conditional zoo model, Janus),
spatial Jacobi inits, and LANTERN relaxed acceptance.

Three lines in a notebook::

    import mmspec.image
    gen = mmspec.image.generate("red ring", "jacobi", "speculative", temperature=1.0, seed=0)  # SJD
    gen.outputs[0]                                  # a PIL.Image; gen.stats has steps and wall time
"""
from __future__ import annotations

from .inits import SpatialInit
from .lantern import lantern_rule, neighbour_table, neighbours_for
from .target import ImageTarget


def generate(prompt=None, drafter: str = "none", rule: str | None = None, **kwargs):
    """Generate with the zoo (or ``target=``/``draft=`` names) and a named drafter and rule, as the CLI
    names them: ``jacobi`` + ``greedy`` is Jacobi decoding, ``jacobi`` + ``speculative`` SJD, ``jacobi`` +
    ``lantern`` LANTERN (LOSSY), ``model`` + ``speculative`` draft-model speculation. Keywords as in
    ``mmspec.methods.generate_with``; returns an ``mmspec.Generation``."""
    from mmspec.methods import generate_with

    return generate_with("image", prompt, drafter, rule, **kwargs)


__all__ = ["ImageTarget", "SpatialInit", "lantern_rule", "neighbour_table", "neighbours_for", "generate"]
