"""Named methods: a drafter and an accept rule built from the names the CLI, the app and the bench use,
and ``run``, the one way all three generate with them. Everything here is modality-free: a modality adds
names through its ``Modality`` (``inits``, ``drafters``, ``rules``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from . import accept, renamed
from .accept import Rule, RuleSpec
from .drafters import CascadeDrafter, JacobiDrafter, LookaheadDrafter, MixedDrafter, ModelDrafter, PromptLookupDrafter
from .drafters.coupled import CoupledJacobiDrafter
from .drafters.proactive import ProactiveDrafter
from .loop import generate
from .modalities import Modality, Models
from .protocols import Drafter, Target
from .types import Generation, Sampling, count

DRAFTERS = ("none", "model", "prompt-lookup", "jacobi", "coupled", "coupled-gumbel", "proactive", "lookahead", "heads")
COUPLED: dict[str, Callable[..., Drafter]] = {
    "coupled": lambda init: CoupledJacobiDrafter(init, "maximal"),  # MC-SJD: maximal coupling across Jacobi steps
    "coupled-gumbel": lambda init: CoupledJacobiDrafter(init, "gumbel"),  # Gumbel noise fixed per position
    "proactive": lambda init: ProactiveDrafter(init),  # SJD-PAC: coupled window + a width-3, depth-2 tree
}
"""Coupled Jacobi drafters (exact with the speculative rule): Jacobi windows whose successive drafts agree;
they take ``init`` like ``jacobi``."""
TAKES_INIT = ("jacobi", "lookahead", *COUPLED)
BRANCHING = ("model", "prompt-lookup", "lookahead", "heads")
"""Core drafters that draft a token tree when given a node budget (``tree``); a modality's own drafter
branches when its factory takes a ``tree`` parameter. ``"A+B"`` names a ``MixedDrafter`` of the parts."""
INITS = ("pad", "random", "repeat")
NGRAM = {"prompt-lookup": 3, "lookahead": 4}  # default n-gram length per drafter
"""``ngram`` is the n-gram length N everywhere: prompt lookup matches the last N..1 frames, lookahead keeps
N-grams (a key frame and the N - 1 frames that followed it)."""


def drafter_names(modality: Modality) -> list[str]:
    return [*DRAFTERS, *modality.drafters]


def init_names(modality: Modality) -> list[str]:
    return [*INITS, *modality.inits]


def rule_specs(modality: Modality) -> dict[str, RuleSpec]:
    return {**accept.RULES, **modality.rules}


def parts_of(name: str) -> list[str]:
    """The drafters a name stands for: ``"prompt-lookup+model"`` (a mixture: one trie) or
    ``"prompt-lookup|heads"`` (a cascade: the first that drafts) -> ``["prompt-lookup", ...]``."""
    return name.replace("|", "+").split("+") if isinstance(name, str) else [name]


def is_cascade(name: str) -> bool:
    return isinstance(name, str) and "|" in name


def needs_draft(name: str) -> bool:
    """Whether the named drafter (or a part of a mixed one) drafts with a draft model."""
    return "model" in parts_of(name)


def budget_for(name: str, modality: Modality, tree: int | None) -> int | None:
    """A node budget offered to every method (compare, bench, the app): ``tree`` for a drafter that can take
    one, None (a chain) for the others and for plain decoding; 0 or None means no tree."""
    if not tree or name == "none" or not branches_any(name, modality):
        return None
    return int(tree)


def branches_any(name: str, modality: Modality) -> bool:
    """Whether a drafter name can take a node budget: one that branches, or a mixture (one shared trie)."""
    parts = parts_of(name)
    return (len(parts) > 1 and not is_cascade(name)) or any(branches(p, modality) for p in parts)


def branches(name: str, modality: Modality) -> bool:
    """Whether the drafter ``name`` (one part) can draft a tree."""
    if name in modality.drafters:
        return "tree" in inspect.signature(modality.drafters[name]).parameters
    return name in BRANCHING


def check_drafter(name: str, modality: Modality, *, init: str | Callable = "random", ngram: int | None = None,
                  tree: int | None = None, width: int = 2, dynamic: bool = False) -> None:
    """Validate a drafter name (one drafter, or ``"A+B"``), init policy, n-gram length and tree shape
    before any model loads."""
    parts, allowed = parts_of(name), drafter_names(modality)
    if len(parts) > 1:
        if "+" in name and "|" in name:
            raise ValueError(f"drafter {name!r}: use either A+B (one trie) or A|B (the first that drafts), not both")
        for part in parts:
            if part not in allowed or part == "none":
                raise ValueError(f"drafter {name!r}: unknown part {part!r}; parts of A+B and A|B are: "
                                 f"{', '.join(d for d in allowed if d != 'none')}")
        if len(set(parts)) < len(parts):
            raise ValueError(f"drafter {name!r} names a part twice")
    elif name not in allowed:
        raise ValueError(f"unknown drafter {name!r} for {modality.name}; allowed: {', '.join(allowed)}, or A+B, A|B")
    if isinstance(init, str) and init not in init_names(modality):
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(init_names(modality))}")
    if ngram is not None:
        count(ngram, "ngram (n-gram length)", minimum=2 if "lookahead" in parts else 1)
    _check_tree(parts, modality, tree, width, dynamic)
    if is_cascade(name) and tree is not None and not any(branches(p, modality) for p in parts):
        raise ValueError(f"no part of {name!r} can draft a tree: leave tree unset")


def _check_tree(parts: list[str], modality: Modality, tree, width, dynamic) -> None:
    if tree is not None:
        count(tree, "tree (node budget)")
    count(width, "width (children per node)")
    if not isinstance(dynamic, bool):
        raise ValueError(f"dynamic must be True or False, got {dynamic!r}")
    if dynamic and (tree is None or "model" not in parts):
        raise ValueError("dynamic (EAGLE-2 trees) applies to the model drafter with a node budget: set tree and "
                         "use drafter 'model' (or a mixture with it)")
    if tree is not None and len(parts) == 1 and not branches(parts[0], modality):
        raise ValueError(f"drafter {parts[0]!r} cannot draft a tree: leave tree unset (or mix it with one that "
                         f"branches, e.g. {parts[0]}+prompt-lookup)")


def make_drafter(name: str, modality: Modality, *, target: Target | None = None, draft: Target | None = None,
                 init: str | Callable = "random", ngram: int | None = None, options: dict | None = None,
                 tree: int | None = None, width: int = 2, dynamic: bool = False,
                 heads: str | None = None, cache: dict | None = None) -> Drafter | None:
    """``none`` -> None (plain decoding); ``model`` needs ``draft``; ``jacobi``/``lookahead`` take ``init``;
    ``heads`` loads the self-drafter in the folder ``heads`` (default: the modality's zoo heads) for
    ``target`` (kept in ``cache``, a dict the caller holds between runs, when given: ``Models.cache``);
    a modality's own drafters are built by their factory from ``target`` and ``options``.

    ``tree`` (node budget N) makes the drafters that branch draft token trees (``width`` children per
    node and ``dynamic`` EAGLE-2 trees for the model drafter); ``"A+B"`` is a ``MixedDrafter`` of the
    parts under the node budget ``tree`` (parts that branch get the same budget; None: chains merged);
    ``"A|B"`` a ``CascadeDrafter``: the first part with a guess drafts the step (prompt lookup there drafts
    only after a match of the full n-gram length, so the other steps fall through)."""
    check_drafter(name, modality, init=init, ngram=ngram, tree=tree, width=width, dynamic=dynamic)
    parts = parts_of(name)
    if len(parts) > 1:
        made = [_make_one(part, modality, target, draft, init, ngram, options,
                          tree if branches(part, modality) else None, width, dynamic, heads,
                          strict=is_cascade(name), cache=cache) for part in parts]
        return CascadeDrafter(made) if is_cascade(name) else MixedDrafter(made, nodes=tree)
    return _make_one(name, modality, target, draft, init, ngram, options, tree, width, dynamic, heads, cache=cache)


def heads_folder(modality: Modality, heads: str | None) -> str:
    """The self-drafter folder ``--heads`` names (``zoo:NAME`` in the modality's zoo, or a path); None: the
    modality's zoo heads for its default target. ValueError when there is none."""
    from .files import resolve

    name = heads if heads is not None else modality.default_heads
    if name is None:
        raise ValueError(f"drafter 'heads' needs --heads DIR: {modality.name} ships no zoo heads")
    if str(name).startswith("zoo:") and modality.zoo is None:
        raise ValueError(f"{modality.name} has no zoo; give --heads a folder")
    return resolve(name, modality.zoo, "config.json", f"{modality.name} heads", hub=False)


def _make_one(name, modality, target, draft, init, ngram, options, tree, width, dynamic, heads=None,
              strict=False, cache=None) -> Drafter | None:
    """One drafter by name (already checked)."""
    if name == "heads":
        from .heads import load_heads

        if target is None:
            raise ValueError("drafter 'heads' reads the target's hidden states: pass the loaded target")
        return load_heads(heads_folder(modality, heads), target, tree=tree, width=width, cache=cache)
    if name in modality.drafters:
        shape = {} if tree is None else {"tree": tree, "width": width}
        return modality.drafters[name](target, **(options or {}), **shape)
    init = modality.inits.get(init, init) if isinstance(init, str) else init
    if name == "none":
        return None
    if name == "model":
        if draft is None:
            raise ValueError("drafter 'model' needs a draft model (--draft NAME_OR_PATH)")
        return ModelDrafter(draft, tree=tree, width=width, dynamic=dynamic)
    if name == "prompt-lookup":
        n = ngram or NGRAM[name]
        return PromptLookupDrafter(max_ngram=n, min_ngram=n if strict else 1, tree=tree)
    if name == "jacobi":
        return JacobiDrafter(init=init)
    if name in COUPLED:
        return COUPLED[name](init)
    return LookaheadDrafter(ngram=ngram or NGRAM[name], init=init, tree=tree)


def make_rule(name: str, modality: Modality, target: Target | None = None, options: dict | None = None) -> Rule:
    """A named rule built for the loaded ``target``, with the options its spec reads."""
    spec = accept.spec_of(name, modality.rules)
    return spec.build(target, **{k: v for k, v in (options or {}).items() if k in spec.options})


def default_rule(temperature: float) -> str:
    return "greedy" if temperature == 0 else "speculative"


def label(drafter: str, rule: str) -> str:
    return "autoregressive" if drafter == "none" else f"{drafter} / {rule}"


def run(modality: Modality, target: Target, prompt: Any = None, *, drafter: str = "none", rule: str | None = None,
        draft: Target | None = None, batch: int = 1, k: int = 4, init: str | Callable = "random",
        ngram: int | None = None, max_new_tokens: int | None = None, sampling: Sampling = Sampling(),
        seed: int = 0, options: dict | None = None, tree: int | None = None, width: int = 2,
        dynamic: bool = False, heads: str | None = None, cache: dict | None = None,
        compact: bool = True) -> Generation:
    """One generation with a named drafter and rule (fresh drafter: drafters keep state); ``tree`` is the
    node budget of a branching drafter (None or 0: a chain), ``width`` its children per expanded node;
    ``cache`` a dict the caller keeps between runs (loaded heads are read once: ``make_drafter``); ``compact``:
    drop rows that have ended from a batch (``mmspec.stream``)."""
    rule_obj = make_rule(rule or default_rule(sampling.temperature), modality, target, options)
    made = make_drafter(drafter, modality, target=target, draft=draft, init=init, ngram=ngram, options=options,
                        tree=tree or None, width=width, dynamic=dynamic, heads=heads, cache=cache)
    prompt = modality.default_prompt if prompt is None else prompt
    if isinstance(prompt, (list, tuple)):  # one row per prompt
        prompts = [row for p in prompt for row in modality.prompts(p, 1)] if prompt else modality.prompts(None, 1)
    else:
        prompts = modality.prompts(prompt, count(batch, "batch"))
    return generate(target, made, prompts, max_new_tokens=modality.length(max_new_tokens, target), k=k,
                    rule=rule_obj, sampling=sampling, seed=seed, compact=compact)


def generate_with(modality: str | Modality, prompt: Any = None, drafter: str = "none", rule: str | None = None, *,
                  target: str | None = None, draft: str | None = None, models: Models | None = None,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  options: dict | None = None, **kwargs) -> Generation:
    """Load (or reuse) a modality's models by name and run one named method: the per-modality Python
    one-liner, e.g. ``mmspec.image.generate("red ring", "jacobi", "speculative", temperature=1.0)``.

    ``drafter`` / ``rule`` take the CLI's names; ``options`` the modality's load and rule options;
    ``models`` a ``Models`` the caller keeps to reuse loaded models (and heads) between calls (None: load
    them for this call only); other keywords (``k``, ``init``, ``ngram``, ``batch``, ``max_new_tokens``, ``seed``, ``tree``, ``width``,
    ``heads``) go to ``run``.
    """
    from .modalities import get

    renamed.check_method(kwargs)
    renamed.check_keywords(kwargs, "generate")
    renamed.check_keywords(options or {}, "options")
    mod = get(modality) if isinstance(modality, str) else modality
    models = Models(max_models=2) if models is None else models
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    check_drafter(drafter, mod, init=kwargs.get("init", "random"), ngram=kwargs.get("ngram"),
                  tree=kwargs.get("tree") or None, width=kwargs.get("width", 2), dynamic=kwargs.get("dynamic", False))
    accept.spec_of(rule or default_rule(sampling.temperature), mod.rules)
    opts = dict(options or {})
    tgt = models.get(mod, target or mod.default_target, **opts)
    dft = models.get(mod, draft or mod.default_draft, **opts) if needs_draft(drafter) else None
    return run(mod, tgt, prompt, drafter=drafter, rule=rule, draft=dft, sampling=sampling, options=opts,
               cache=models.cache, **kwargs)
