"""The three contracts of the core: a Target, a Drafter and an accept rule (``mmspec.accept.Rule``).

A Target wraps one model of one modality (an adapter): it turns a prompt into a prefilled cache,
scores frames ``[B, T, K]`` at its committed position, forgets what a step rejected, and decodes
committed frames to the modality's output. A Drafter guesses the next frames cheaply. Everything the
core and the drafters read from a target is declared here; nothing else may be assumed.

Order of calls in one generation (``mmspec.stream``), which every implementation may rely on:

1. ``target.start(prompt, max_new_tokens)``; then ``drafter.start(target, sampler, prompt, budget)``.
2. Per step: ``drafter.propose(last, k)``, ``target.forward([last, draft], parents)`` (parents only for a
   token tree), the rule's verdict, ``target.keep(pos, path)`` to the committed length and path, and
   only then ``drafter.observe(step, logits)`` (so ``target.pos == step.pos`` while a drafter observes). The first step has no draft and no forward:
   its logits are the prefill's.
   A drafter whose ``wants_hidden`` is True (a self-drafter) gets ``target.track_hidden(True)`` before the
   prefill; every other generation on a target that has the capability runs with ``track_hidden(False)``.
   Every drafter declares ``wants_hidden`` (False for all but self-drafters).
3. Rows of a batch commit their own counts (each its accepted frames + 1: ``Step.counts``) when the target
   and the drafter both declare ``per_row_commits = True`` (an optional attribute, ``mmspec.loop.rows_apart``):
   the target's ``keep(pos, path)`` then takes rows at different positions (its cache masks a row's extra
   slots), and the drafter's ``observe`` reads ``Step.counts`` (frames past a row's count are PAD). Anything
   that does not declare it runs in lockstep: every row commits the batch minimum (ended rows excepted).
4. Rows that have ended may be dropped (``mmspec.compaction``) when the target and the drafter both declare
   ``selects_rows = True`` (an optional attribute, with rows apart as in 3.): between a step's ``observe`` and the
   next ``propose``, ``target.select_rows(index)`` and ``drafter.select_rows(index)`` keep the rows at
   ``index [B']`` (in that order) and forget the others; later calls see B' rows (``observe`` too), while the
   caller of ``stream`` still gets steps of the starting batch. A target keeps both guidance halves of a row.
5. One generation at a time per target: a target (or a draft model) used by a running generation is
   busy, and ``stream`` refuses to start another on it.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .sampling import Sampler
from .types import Draft, Step


@runtime_checkable
class Target(Protocol):
    num_codebooks: int  # K
    vocab_size: int  # V of the logits the target returns
    pos: Tensor  # [B] committed frames per row (prompt included), as seen by the model's cache
    max_frames: int  # context length in frames: prompt + new frames must fit
    device: torch.device  # where the logits live

    def start(self, prompt: Any, max_new_tokens: int) -> Tensor:
        """Encode and prefill ``prompt`` for a run of up to ``max_new_tokens`` new frames per row; return
        the logits of the first new frame ``[B, 1, K, V]``."""

    def prompt_frames(self) -> list[Tensor]:
        """The prompt as frames, one ``[L_b, K]`` tensor per row (rows may differ in length; an empty
        ``[0, K]`` where the prompt is not in frame space), for drafters that look back at it."""

    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        """Score ``frames [B, T, K]`` at ``pos``; return logits ``[B, T, K, V]`` (guided, constrained);
        ``pos += T``. ``parents [T] or [B, T]`` makes the frames a token tree (``mmspec.tree``): frame t sees
        the cached prefix and its own ancestors (parent -1: the cached prefix only) and sits at position
        ``pos + depth(t) - 1``; None is a chain."""

    def keep(self, pos: Tensor, path: Tensor | None = None) -> None:
        """Forget everything after ``pos [B]``. With ``path [B, m]``: of the last forward's frames, those at
        these indices stay, in order, right after the frames before that forward (``pos`` = those + m):
        the accepted path of a tree, its cache entries gathered to the front and the rest dropped."""

    def finished(self, frames: Tensor) -> Tensor:
        """Which committed frames ``[B, T, K]`` end their row: BoolTensor ``[B, T]``."""

    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        """Committed frames ``[B, T, K]`` with ``lengths [B]`` -> one output per row (str, or an object with
        ``save(path)``), including a row cut short before its end."""

    def check_draft(self, draft: "Target") -> None:
        """Raise ValueError if ``draft`` cannot draft for this target (other tokenizer, codec, grid...)."""


@runtime_checkable
class OutputHead(Protocol):
    """What ``HiddenTarget.output_head`` returns: the target's frozen output projection as an ``nn.Module``,
    hidden ``[..., H]`` -> logits ``[..., K * V]`` (K = 1: ``[..., V]``), built on the target's own weights."""

    hidden_size: int  # H: the size of the state it reads

    def __call__(self, hidden: Tensor) -> Tensor: ...

    def identity(self) -> Tensor:
        """Weights ``[R, H]`` that identify the head (a linear head: its weight; an MLP: the map that reads the
        state): the heads' store fingerprints them, so heads trained for one target refuse another."""

    def as_linear(self) -> tuple[Tensor, Tensor | None] | None:
        """``(weight [K * V, H], bias [K * V] or None)`` when the head is exactly one linear map, else None. A
        self-drafter may read a linear head with int8 weights or on a subset of its rows, and runs any
        other head as it is."""


@runtime_checkable
class FrameEmbedder(Protocol):
    """What ``HiddenTarget.input_embeddings`` returns: the target's frozen embedding of whole frames as an
    ``nn.Module``, ids ``[..., K]`` -> ``[..., E]`` (the sum over codebooks, as the target embeds a frame)."""

    embed_size: int  # E

    def __call__(self, frames: Tensor) -> Tensor: ...


@runtime_checkable
class HiddenTarget(Target, Protocol):
    """An optional capability a Target may have, for self-drafters (Medusa heads, an EAGLE layer). They read
    the state the verify forward already computed: never a second pass of the target."""

    hidden_wanted: bool  # whether start / forward record their hidden state now (set by track_hidden)
    attention_heads: int | None  # heads per attention layer of the target (an EAGLE layer copies it); None: unknown

    def track_hidden(self, on: bool) -> None:
        """Record hidden states in every ``start`` / ``forward`` from now on (``True``), or stop (``False``)."""

    def hidden(self) -> Tensor:
        """``[B, T, H]``: the last layer's hidden state (after the final norm: the input of the output head)
        of the most recent ``start`` / ``forward``, for exactly the frames that call returned logits for
        (the prefill: its last frame; a guided target: its conditional rows). Unchanged by ``keep``.
        ValueError when nothing was recorded."""

    def output_head(self) -> OutputHead:
        """The frozen output projection: ``output_head()(hidden())`` is the last forward's logits (before any
        guidance and constraints the adapter applies)."""

    def input_embeddings(self) -> FrameEmbedder:
        """The frozen embedding of whole frames."""


def has_hidden(target) -> bool:
    """Whether ``target`` offers the hidden-state capability (``HiddenTarget``)."""
    return isinstance(target, HiddenTarget)


DRAFTER = ("implement start/propose/observe and declare wants_hidden (a class attribute: True only for a "
           "self-drafter, which reads target.hidden(); False for every other drafter)")  # what a Drafter must do


@runtime_checkable
class Drafter(Protocol):
    wants_hidden: bool  # True only for a self-drafter: it reads ``target.hidden()`` (a ``HiddenTarget``)

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        """Called after the target's prefill with the same ``prompt`` and the run's real budget of new
        frames (already capped by the target's context)."""

    def propose(self, last: Tensor, k: int) -> Draft:
        """Guess up to ``k`` frames that follow ``last [B, 1, K]`` (the newest committed frame)."""

    def observe(self, step: Step, target_logits: Tensor) -> None:
        """Learn what a step committed (called for every step, the first one and draft-less ones too),
        after the target rolled back (``target.pos == step.pos``); ``target_logits [B, D + 1, K, V]`` are
        that step's target forward (the prefill's for the first)."""
