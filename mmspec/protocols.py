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
3. One generation at a time per target: a target (or a draft model) used by a running generation is
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


class HiddenTarget(Target, Protocol):
    """An optional capability a Target may have, for self-drafters (Medusa heads, an EAGLE layer). They read
    the state the verify forward already computed: never a second pass of the target."""

    def track_hidden(self, on: bool) -> None:
        """Record hidden states in every ``start`` / ``forward`` from now on (``True``), or stop (``False``)."""

    def hidden(self) -> Tensor:
        """``[B, T, H]``: the last layer's hidden state (after the final norm: the input of the output head)
        of the most recent ``start`` / ``forward``, for exactly the frames that call returned logits for
        (the prefill: its last frame). Unchanged by ``keep``. ValueError when nothing was recorded."""

    def output_head(self) -> torch.nn.Module:
        """The frozen output projection: hidden ``[..., H]`` -> logits ``[..., K * V]`` (K = 1: ``[..., V]``)."""

    def input_embeddings(self) -> torch.nn.Module:
        """The frozen embedding of whole frames: ``[..., K]`` ids -> ``[..., E]`` (the sum over codebooks, as
        the target embeds a frame)."""


def has_hidden(target) -> bool:
    """Whether ``target`` offers the hidden-state capability (``HiddenTarget``)."""
    return all(callable(getattr(target, m, None)) for m in ("track_hidden", "hidden", "output_head", "input_embeddings"))


@runtime_checkable
class Drafter(Protocol):
    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        """Called after the target's prefill with the same ``prompt`` and the run's real budget of new
        frames (already capped by the target's context)."""

    def propose(self, last: Tensor, k: int) -> Draft:
        """Guess up to ``k`` frames that follow ``last [B, 1, K]`` (the newest committed frame)."""

    def observe(self, step: Step, target_logits: Tensor) -> None:
        """Learn what a step committed (called for every step, the first one and draft-less ones too),
        after the target rolled back (``target.pos == step.pos``); ``target_logits [B, D + 1, K, V]`` are
        that step's target forward (the prefill's for the first)."""
