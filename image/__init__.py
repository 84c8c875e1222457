"""The image modality: autoregressive image-token targets (mmspec's class-conditional zoo model, Janus),
spatial Jacobi inits, and LANTERN relaxed acceptance.

Three lines in a notebook::

    import mmspec.image
    gen = mmspec.image.generate("red ring", method="sjd", seed=0)
    gen.outputs[0]                                  # a PIL.Image; gen.stats has steps and wall time
"""
from __future__ import annotations

from .inits import SpatialInit
from .lantern import lantern_rule, neighbour_table, neighbours_for
from .target import ImageTarget

METHODS = ("autoregressive", "jacobi", "sjd", "lantern", "draft")
_LOADED: dict = {}


def _load(name: str, **opts):
    from . import api

    key = (name, tuple(sorted(opts.items())))
    if key not in _LOADED:
        _LOADED[key] = api.load(name, **opts)
    return _LOADED[key]


def generate(prompt="red ring", method: str = "sjd", *, target: str = "zoo:shapes", draft: str = "zoo:shapes-draft",
             batch: int = 1, k: int = 16, init: str = "random", temperature: float = 1.0, top_k: int | None = None,
             cfg: float | None = None, delta: float = 0.1, seed: int = 0, **opts):
    """Generate ``batch`` images of class/text ``prompt`` with a named method; returns an ``mmspec.Generation``.

    ``method``: autoregressive, jacobi (greedy), sjd (Speculative Jacobi Decoding), lantern (SJD drafts +
    LOSSY relaxed acceptance, bound ``delta``), draft (draft-model speculation). ``init``: random, left, above.
    Models are loaded once per (name, options) and kept.
    """
    import mmspec
    from mmspec import accept

    from . import api

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    # 1. models (cached), 2. drafter, 3. rule, 4. the shared loop
    tgt = _load(target, cfg_scale=cfg, **opts)
    temp = 0.0 if method == "jacobi" else temperature
    drafter = None
    if method == "draft":
        drafter = mmspec.ModelDrafter(_load(draft, cfg_scale=cfg, **opts))
    elif method != "autoregressive":
        drafter = mmspec.JacobiDrafter(init=api.INITS.get(init, init))  # the drafter binds it to the grid
    rule = accept.greedy if temp == 0 else accept.speculative
    if method == "lantern":
        rule = lantern_rule(neighbours_for(tgt), delta=delta)
    prompts = api.prompts(prompt, batch) if isinstance(prompt, str) else list(prompt)
    return mmspec.generate(tgt, drafter, prompts, max_new_tokens=tgt.grid_tokens, k=k, rule=rule,
                           sampling=mmspec.Sampling(temperature=temp, top_k=top_k), seed=seed)


__all__ = ["ImageTarget", "SpatialInit", "lantern_rule", "neighbour_table", "neighbours_for", "generate", "METHODS"]
