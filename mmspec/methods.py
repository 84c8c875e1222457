"""Named methods: build a drafter and a rule from the names the CLI, the app and the benchmarks use.

A modality's interface module (``mmspec.<modality>.api``) may contribute, besides the core's names:
``INITS`` (extra Jacobi init policies, e.g. spatial ones for image grids), ``RULES`` (name ->
``factory(name, target, **options) -> rule`` for rules that need the loaded target, with ``LOSSLESS``
saying which are exact) and ``DRAFTERS`` (name -> ``factory(target, **options) -> Drafter``).
Everything here is modality-free.
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
    extra: dict[str, Callable] | None = None,
    target: Target | None = None,
    options: dict | None = None,
) -> Drafter | None:
    """``none`` -> None (plain decoding); ``model`` needs ``draft``; ``jacobi``/``lookahead`` take ``init``;
    names in ``extra`` (a modality's ``DRAFTERS``) are built by their factory from ``target``."""
    if name not in NAMES and name not in (extra or {}):
        raise ValueError(f"unknown drafter {name!r}; allowed: {', '.join([*NAMES, *(extra or {})])}")
    if name in (extra or {}):
        return extra[name](target, **(options or {})) if target is not None else None
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


def rule_names(api=None) -> list[str]:
    return [*accept.RULES, *getattr(api, "RULES", {})]


def check_rule(name: str, api=None) -> None:
    if name not in rule_names(api):
        raise ValueError(f"unknown rule {name!r}; allowed: {', '.join(rule_names(api))}")


def make_rule(name: str, api=None, target: Target | None = None, options: dict | None = None):
    """A core rule by name, or a modality rule built for the loaded ``target``."""
    check_rule(name, api)
    if name in accept.RULES:
        return accept.RULES[name]
    return api.RULES[name](name, target, **(options or {}))


def method_label(drafter: str, rule: str) -> str:
    return "autoregressive" if drafter == "none" else f"{drafter} / {rule}"


def is_lossless(rule: str, api=None) -> bool:
    check_rule(rule, api)
    return accept.LOSSLESS[rule] if rule in accept.LOSSLESS else bool(getattr(api, "LOSSLESS", {}).get(rule, False))
