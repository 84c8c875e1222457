"""What the web app serves and how one Run goes: the models it may load, their cache and locks, the checks on
every input, and the baseline-then-methods run that streams each column. No Gradio here and no modality
names: everything modality-specific comes from ``mmspec.modalities.get(name)``.
"""
from __future__ import annotations

import argparse
import threading
import time
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from mmspec import methods, modalities
from mmspec.loop import stream, synchronizer
from mmspec.modalities import Modality, Models
from mmspec.types import PAD, Generation, Sampling

AUTO = "auto"  # rule: greedy at temperature 0, else speculative
OFF = "off"  # an empty method slot
UI_EVERY_S = 0.4  # stream a column to the browser at most this often while it decodes
MAX_ROUNDS = 5  # timed rounds a Run may ask for
MAX_TREE = 64  # tree nodes per step a Run may ask for


class ModelLocks:
    """One lock per loaded model: a stopped run's step still in flight finishes before the next run's."""

    def __init__(self):
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    def hold(self, *models) -> ExitStack:
        """A context holding the locks of ``models`` (None skipped), always taken in the same order."""
        with self._guard:
            locks = [self._locks.setdefault(m, threading.Lock()) for m in models if m is not None]
        stack = ExitStack()
        for lock in sorted(set(locks), key=id):
            stack.enter_context(lock)
        return stack


@dataclass
class Server:
    """The app's serving policy and state: the models it may load (each modality's zoo pair plus the
    ``--model`` ones, or any with ``allow_any``), the model cache, the per-model locks and the limits."""

    extra_models: dict[str, set[str]] = field(default_factory=dict)  # modality -> names from --model
    allow_any: bool = False
    fast: bool | None = None  # the fast path for every model loaded (None: on where it measured faster)
    models: Models = field(default_factory=lambda: Models(max_models=6))
    locks: ModelLocks = field(default_factory=ModelLocks)
    max_prompt_chars: int = 500
    max_k: int = 32
    queue_size: int = 16  # waiting Runs across all tabs; more are turned away
    capacities: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)  # warmed target -> frames

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Server":
        extra: dict[str, set[str]] = {}
        for spec in getattr(args, "model", None) or []:
            name, sep, path = str(spec).partition("=")
            if not sep or name not in modalities.names() or not path.strip():
                raise ValueError(f"--model takes MODALITY=NAME_OR_PATH with MODALITY one of "
                                 f"{', '.join(modalities.names())}; got {spec!r}")
            extra.setdefault(name, set()).add(path.strip())
        return cls(extra_models=extra, allow_any=bool(getattr(args, "allow_any_model", False)),
                   fast=getattr(args, "fast", None))

    def served(self, mod: Modality) -> list[str]:
        return [mod.default_target, mod.default_draft, *sorted(self.extra_models.get(mod.name, ()))]

    def check_model(self, mod: Modality, name: str) -> str:
        name = (name or "").strip()
        if not name:
            raise ValueError("the model name is empty")
        if not self.allow_any and name not in self.served(mod):
            raise ValueError(f"this server does not serve {name!r} for {mod.name}; it serves "
                             f"{', '.join(self.served(mod))} (start it with --model {mod.name}=NAME_OR_PATH to add "
                             "one, or --allow-any-model for local use)")
        return name

    def load(self, mod: Modality, name: str, options: dict):
        """A served model from the cache, warmed up on first use."""
        options = options if self.fast is None else dict(options, fast=self.fast)
        target = self.models.get(mod, self.check_model(mod, name), **options)
        if target not in self.capacities:
            self.capacities[target] = self._warm_up(mod, target)
        return target

    def _warm_up(self, mod: Modality, target) -> int:
        """Decode the default prompt once (lazy allocations, first kernels: timings then compare like with like)
        and return the new frames the target holds after it. A modality whose length is the target's own
        (``max_new_tokens`` None) decodes to the end and counts; others decode two frames."""
        full = mod.max_new_tokens is None
        try:
            with self.locks.hold(target):
                steps = list(stream(target, None, mod.prompts(mod.default_prompt, 1),
                                    max_new_tokens=int(target.max_frames) if full else 2))
        except ValueError:  # a model that takes other prompts than the modality's default: no warm-up
            return int(target.max_frames)
        if full:
            return sum(s.frames.shape[1] for s in steps)
        return int(target.max_frames) - int(steps[0].pos[0]) + int(steps[0].frames.shape[1])


# -- one Run ----------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """One Run's inputs as the tab sends them (checked by ``plan``, never altered)."""

    prompt: object
    target: str
    draft: str
    methods: list[tuple]  # up to three (drafter, rule) or (drafter, rule, tree nodes) slots; drafter OFF = empty
    k: int = 4
    init: str = "random"
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new: int = 16
    knobs: dict = field(default_factory=dict)  # modality option -> value (None: the model's own)
    rounds: int = 2  # timed rounds (interleaved, after the streamed run) behind the speedup; 0: the streamed run


@dataclass
class Column:
    """One method's run as it streams: its real steps and the library's decode time."""

    drafter: str
    rule: str
    tree: int | None = None  # node budget of a token tree per step (None: a chain)
    steps: list = field(default_factory=list)
    wall_s: float = 0.0
    outputs: list | None = None
    done: bool = False
    stopped: bool = False
    speedup: object = None  # mmspec.timing.Spread over the timed rounds (None: from the streamed run)
    flags: list = field(default_factory=list)  # why the speedup may not be trusted (mmspec.timing.flags)

    @property
    def label(self) -> str:
        return methods.label(self.drafter, self.rule) + (f" tree={self.tree}" if self.tree else "")

    def generation(self) -> Generation:
        """The ``Generation`` of the steps committed so far (outputs once the column is done)."""
        tokens = torch.cat([s.frames for s in self.steps], dim=1)  # [B, T, K]
        lengths = (tokens[..., 0] != PAD).sum(dim=1)  # [B]
        return Generation(tokens=tokens[:, : int(lengths.max())], lengths=lengths, steps=self.steps,
                          wall_s=self.wall_s, outputs=self.outputs)

    @property
    def made(self) -> int:
        return sum(s.frames.shape[1] for s in self.steps)


def check_inputs(server: Server, mod: Modality, inputs: Inputs) -> Sampling:
    """Refuse (ValueError) anything out of range before a model loads; returns the sampling settings."""
    prompt = inputs.prompt
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        if len(prompt) > server.max_prompt_chars:
            raise ValueError(f"the prompt has {len(prompt)} characters; this server allows {server.max_prompt_chars}")
    _whole(inputs.max_new, f"max new {mod.unit}", 1, mod.max_new_limit)
    _whole(inputs.k, "k (drafted frames per step)", 1, server.max_k)
    _whole(inputs.seed, "seed", 0, 2**63 - 1)
    _whole(inputs.top_k, "top-k", 0, 2**31 - 1)
    _whole(inputs.rounds, "timed rounds", 0, MAX_ROUNDS)
    temperature = float(inputs.temperature or 0.0)
    top_p = float(inputs.top_p if inputs.top_p is not None else 1.0)
    return Sampling(temperature=temperature, top_k=int(inputs.top_k) or None, top_p=top_p if top_p < 1 else None)


def _whole(value, name: str, low: int, high: int) -> None:
    if value is None or isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be between {low} and {high} on this server, got {int(value)}")


def plan(mod: Modality, inputs: Inputs, temperature: float) -> list[tuple[str, str, int | None]]:
    """The baseline then each method as (drafter, rule, tree); names, rules and node budgets checked, ``auto``
    resolved; a node budget goes to a drafter that branches (the others run as chains)."""
    picks = []
    for drafter, rule, *tree in inputs.methods:
        if not drafter or drafter == OFF:
            continue
        nodes = tree[0] if tree else 0
        _whole(nodes, f"{drafter}: tree nodes", 0, MAX_TREE)
        nodes = methods.budget_for(drafter, mod, int(nodes))
        methods.check_drafter(drafter, mod, init=inputs.init, tree=nodes)
        rule = methods.default_rule(temperature) if rule in (None, "", AUTO) else rule
        if rule not in methods.rule_specs(mod):
            raise ValueError(f"unknown accept rule {rule!r}; allowed: {', '.join(methods.rule_specs(mod))}")
        if rule == "greedy" and temperature > 0:
            raise ValueError(f"rule 'greedy' needs temperature 0 (got {temperature}); pick auto, speculative, "
                             "reproducible or typical")
        picks.append((drafter, rule, nodes))
    methods.check_drafter("none", mod, init=inputs.init)
    base = "greedy" if temperature == 0 else ("reproducible" if any(r == "reproducible" for _, r, _ in picks)
                                              else "speculative")
    return [("none", base, None), *picks]


def options(mod: Modality, knobs: dict) -> dict:
    """``mod.options`` over the modality's own argument defaults, with the tab's knobs that are set."""
    parser = argparse.ArgumentParser(add_help=False)
    mod.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in knobs.items():
        if value is not None:
            setattr(args, key, value)
    return mod.options(args)


def run_column(server: Server, col: Column, target, drafter, draft, prompts, *, rule, sampling, k, max_new, seed):
    """Decode step by step, timing only the library; yields after each step, then once done."""
    sync = synchronizer(target.device)
    steps = stream(target, drafter, prompts, max_new_tokens=max_new, k=k, rule=rule, sampling=sampling, seed=seed)
    while True:
        with server.locks.hold(target, draft):
            sync()
            t0 = time.perf_counter()
            step = next(steps, None)
            sync()
            col.wall_s += time.perf_counter() - t0
        if step is None:
            break
        col.steps.append(step)
        yield col
    gen = col.generation()
    col.outputs = target.decode(gen.tokens, gen.lengths)
    col.done = True
    yield col
