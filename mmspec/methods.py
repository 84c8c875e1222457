"""Named methods: build a drafter and a rule from the names the CLI, the app and the benchmarks use.

A modality may contribute extra Jacobi init policies (e.g. spatial ones for image grids) through
``inits``; everything else is modality-free.
"""
from __future__ import annotations

from typing import Callable

from . import accept
from .drafters import NAMES, JacobiDrafter, LookaheadDrafter, ModelDrafter, PromptLookupDrafter
from .protocols import Drafter, Target


def make_drafter(
    name: str,
    *,
    draft: Target | None = None,
    init: str | Callable = "random",
    ngram: int = 3,
    inits: dict[str, Callable] | None = None,
) -> Drafter | None:
    """``none`` -> None (plain decoding); ``model`` needs ``draft``; ``jacobi``/``lookahead`` take ``init``."""
    if name not in NAMES:
        raise ValueError(f"unknown drafter {name!r}; allowed: {', '.join(NAMES)}")
    if isinstance(init, str) and inits and init in inits:
        init = inits[init]
    elif isinstance(init, str) and init not in ("pad", "random", "repeat"):
        allowed = ["pad", "random", "repeat", *(inits or {})]
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(allowed)}")
    if name == "none":
        return None
    if name == "model":
        if draft is None:
            raise ValueError("drafter 'model' needs a draft model (--draft NAME_OR_PATH)")
        return ModelDrafter(draft)
    if name == "prompt-lookup":
        return PromptLookupDrafter(max_ngram=ngram)
    if name == "jacobi":
        return JacobiDrafter(init=init)
    return LookaheadDrafter(ngram=ngram + 1, init=init)


def method_label(drafter: str, rule: str) -> str:
    return "autoregressive" if drafter == "none" else f"{drafter} / {rule}"


def is_lossless(rule: str) -> bool:
    accept.get_rule(rule)
    return accept.LOSSLESS[rule]
