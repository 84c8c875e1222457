"""The modality registry: everything the CLI, the bench and the app need to drive one modality.

Each modality package defines one ``Modality`` (in its ``api`` module) and is named once in ``BUILTIN``;
``register`` adds another at run time. The core, the CLI, the bench and the app loop over ``names()`` and
read the ``Modality`` they get; none of them names a modality.
"""
from __future__ import annotations

import argparse
import importlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .accept import RuleSpec
from .protocols import Drafter, Target

BUILTIN = {"text": "mmspec.text.api", "image": "mmspec.image.api", "speech": "mmspec.speech.api"}  # registration
_REGISTERED: dict[str, "Modality"] = {}


@dataclass(frozen=True)
class Modality:
    """One modality's interface.

    ``unit`` names one frame in user-facing text (tokens, codes, frames). ``max_new_tokens`` is the one
    default length of the CLI, the Python API and the app (None: as long as the target allows, e.g. a
    full image grid); ``max_new_limit`` the most the app offers. ``load(name, **options)`` builds a Target;
    ``prompts(prompt, batch)`` checks one prompt and repeats it ``batch`` times. ``add_arguments`` /
    ``options`` are the CLI's modality options (``options(namespace) -> dict`` for ``load`` and the rules).
    ``inits``, ``drafters`` and ``rules`` extend the core's Jacobi init policies, drafters
    (``factory(target, **options) -> Drafter``) and accept rules. ``suite`` is the bench suite
    (``mmspec.bench.Suite``); ``display`` is the app's view of an output (``demos/app.py``).
    ``default_heads`` names the zoo self-drafter of ``default_target`` (``--drafter heads`` without
    ``--heads``) and ``zoo`` the folder ``zoo:NAME`` names live in; ``heads_prompts(target, held_out)`` yields the prompts whose samples a self-drafter trains
    on, or ``heads_corpus(target, data, held_out, max_tokens, length)`` gives ``(description, examples)``, the
    ``(prompt, frames [length, K])`` windows of a corpus it trains on (``data``: the user's ``--data``). ``extension`` is the suffix an output
    is saved with by default and ``suffixes`` every suffix it can be saved as (``--out`` is checked against them
    before a run; empty: ``extension`` only). ``compare`` is ``mmspec compare``'s default method list
    (``drafter[:rule]``): the classic methods and the modality's fastest lossless ones.
    """

    name: str
    title: str
    unit: str
    default_target: str
    default_draft: str
    examples: tuple[str, ...]
    load: Callable[..., Target]
    prompts: Callable[[Any, int], list]
    max_new_tokens: int | None = 64
    max_new_limit: int = 512
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    options: Callable[[argparse.Namespace], dict] = lambda args: {}
    inits: Mapping[str, Callable] = field(default_factory=dict)
    drafters: Mapping[str, Callable[..., Drafter]] = field(default_factory=dict)
    rules: Mapping[str, RuleSpec] = field(default_factory=dict)
    suite: Any = None
    display: Any = None
    default_heads: str | None = None
    zoo: Any = None
    heads_prompts: Callable[[Target, bool], Any] | None = None
    heads_corpus: Callable[..., tuple[str, Any]] | None = None
    extension: str = ".txt"
    suffixes: tuple[str, ...] = ()
    compare: tuple[str, ...] = ("prompt-lookup", "jacobi", "lookahead", "model")
    notes: str = ""

    @property
    def default_prompt(self) -> str:
        return self.examples[0]

    def length(self, max_new_tokens: int | None, target: Target) -> int:
        """The run's length: ``max_new_tokens``, else the modality's default, else what the target holds."""
        if max_new_tokens is not None:
            return max_new_tokens
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return int(target.max_frames)


def register(modality: Modality) -> Modality:
    """Add a modality (a name already taken is a ValueError)."""
    if not isinstance(modality, Modality):
        raise ValueError(f"register takes an mmspec.modalities.Modality, got {type(modality).__name__}")
    if modality.name in BUILTIN or modality.name in _REGISTERED:
        raise ValueError(f"modality {modality.name!r} is already registered")
    _REGISTERED[modality.name] = modality
    return modality


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def names() -> list[str]:
    return [*BUILTIN, *_REGISTERED]


def get(name: str) -> Modality:
    """The registered modality called ``name`` (its package is imported on first use)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN:
        raise ValueError(f"unknown modality {name!r}; allowed: {', '.join(names())}")
    return importlib.import_module(BUILTIN[name]).MODALITY


def unavailable(name: str) -> str | None:
    """Why a modality cannot be used here (a missing optional package), or None."""
    try:
        get(name)
    except ImportError as err:
        return f"{type(err).__name__}: {err}"
    return None


class Models:
    """Loaded models by (modality, name, options): the ``max_models`` most recently used are kept.

    The app and the notebook helpers hold one of these instead of a module-level dict. ``cache`` is a dict
    for what is built from these models and worth keeping between runs (a target's loaded self-drafter
    heads: ``methods.run(cache=...)``); it goes with this object, so whoever owns the models owns it.
    """

    def __init__(self, max_models: int = 4):
        if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1:
            raise ValueError(f"max_models must be an integer >= 1, got {max_models!r}")
        self.max_models = max_models
        self._models: OrderedDict[tuple, Target] = OrderedDict()
        self.cache: dict = {}

    def get(self, modality: Modality, name: str, **options) -> Target:
        key = (modality.name, str(name), tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = modality.load(name, **options)
        self._models[key] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model

    def __len__(self) -> int:
        return len(self._models)


@dataclass(frozen=True)
class Knob:
    """One modality option the app offers as a number box: ``option`` is a key of ``Modality.options``'
    result (what ``load`` and the rules read); ``value`` None leaves it unset (the model's own default)."""

    option: str
    label: str
    minimum: float
    maximum: float
    value: float | None = None
    step: float = 0.25


@dataclass(frozen=True)
class Display:
    """How the web app shows one modality (read by ``demos/``; nothing here imports Gradio).

    ``component`` names the Gradio output component class (``"HTML"``, ``"Image"``, ``"Audio"``), built only
    when the app lays out a tab, with ``component_options``. ``value(output)`` turns one decoded output into
    that component's value. ``live(target, frames, from_draft)`` (optional) builds a value from the committed
    frames of row 0 (``[T, K]`` and ``[T]``) while a column streams, and for the finished output too when
    ``live_final`` (text: the accepted-draft highlighting). ``methods`` are the tab's default
    ``(drafter, rule)`` slots (rule ``"auto"``: greedy at temperature 0, else speculative); ``helps`` one line
    per drafter on when it helps; ``examples`` ``(prompt, drafter, why)`` rows where that drafter clearly
    wins; ``init`` the default Jacobi init; ``k`` the default draft length; ``knobs`` modality options as number boxes; ``choices(target)``
    (optional) the prompts a target accepts (class names), shown as a dropdown.
    """

    component: str
    value: Callable[[Any], Any]
    component_options: Mapping[str, Any] = field(default_factory=dict)
    live: Callable[[Target, Any, Any], Any] | None = None
    live_final: bool = False
    methods: tuple[tuple[str, str], ...] = ()
    helps: Mapping[str, str] = field(default_factory=dict)
    examples: tuple[tuple[str, str, str], ...] = ()
    init: str = "random"
    k: int = 4
    knobs: tuple[Knob, ...] = ()
    choices: Callable[[Target], list] | None = None
