"""The two interfaces the loop talks to: a Target and a Drafter.

A Target wraps one model of one modality (an adapter): it turns a prompt into a prefilled cache,
scores frames ``[B, T, K]`` at its committed position, forgets what a step rejected, and decodes
committed frames to the modality's output. A Drafter guesses the next frames cheaply.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from .sampling import Sampler
from .types import Draft, Step


@runtime_checkable
class Target(Protocol):
    num_codebooks: int  # K
    vocab_size: int  # V of the logits the target returns
    pos: Tensor  # [B] committed frames per row (prompt included), as seen by the model's cache
    max_frames: int  # context length in frames: prompt + new frames must fit

    def start(self, prompt: Any, max_new_frames: int) -> Tensor:
        """Encode and prefill ``prompt``; return the logits of the first new frame ``[B, 1, K, V]``."""

    def prompt_frames(self) -> Tensor:
        """The prompt as frames ``[B, L, K]`` (for drafters that look back at it)."""

    def forward(self, frames: Tensor) -> Tensor:
        """Score ``frames [B, T, K]`` at ``pos``; return logits ``[B, T, K, V]`` (guided, constrained);
        ``pos += T``."""

    def rollback(self, pos: Tensor) -> None:
        """Forget everything after ``pos [B]``."""

    def finished(self, frames: Tensor) -> Tensor:
        """Which committed frames ``[B, T, K]`` end their row: BoolTensor ``[B, T]``."""

    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        """Committed frames ``[B, T, K]`` with ``lengths [B]`` -> one output per row."""


@runtime_checkable
class Drafter(Protocol):
    def start(self, target: Target, sampler: Sampler) -> None:
        """Called after the target's prefill; the drafter reads ``target.prompt_frames()`` if it needs to."""

    def propose(self, last: Tensor, k: int) -> Draft:
        """Guess up to ``k`` frames that follow ``last [B, 1, K]`` (the newest committed frame)."""

    def observe(self, step: Step, target_logits: Tensor) -> None:
        """Learn what a step committed (called for every step, the first one and draft-less ones too);
        ``target_logits [B, D + 1, K, V]`` are that step's target forward (the prefill's for the first)."""
