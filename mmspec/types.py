"""Core value types shared by every modality.

Everything the core sees is frames of K tokens: ``[B, T, K]``. Text and image tokens have K = 1; a
codec LM with parallel heads has K = number of codebooks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

PAD = -1
"""Token id that fills ``Verdict.tokens`` after the committed frames and ``Generation.tokens`` after EOS."""


@dataclass(frozen=True)
class Sampling:
    """How the target's distribution is warped and sampled.

    ``temperature == 0`` is greedy decoding. ``top_k`` / ``top_p`` filter the distribution after the
    temperature, identically for the target, the draft and the residual.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Draft:
    """What a drafter proposes for one step.

    ``probs`` is the distribution each draft token was SAMPLED from (after the same warping as the
    target); ``None`` means the draft is deterministic given the past (prompt lookup, greedy Jacobi, a
    greedy draft model), which the speculative rule treats as q = one-hot.
    """

    tokens: Tensor  # [B, D, K]
    probs: Tensor | None = None  # [B, D, K, V]

    @property
    def size(self) -> int:
        return self.tokens.shape[1]


@dataclass
class Verdict:
    """What an accept rule decided: accepted frames, then one recovered/bonus frame, then PAD."""

    tokens: Tensor  # [B, D + 1, K]
    n_accepted: Tensor  # [B] accepted draft frames per row


@dataclass
class Step:
    """One draft -> verify -> accept step, as the loop commits it (the batch minimum)."""

    frames: Tensor  # [B, n, K] committed frames (PAD after a row's EOS)
    from_draft: Tensor  # [B, n] True where the frame is an accepted draft frame
    n_drafted: int  # D
    n_accepted: Tensor  # [B] accepted draft frames per row (before the batch minimum)
    target_forwards: int  # target forwards this step (1, or 1 + prefill)


@dataclass
class Generation:
    """The result of ``generate``: tokens per row and the statistics of the run."""

    tokens: Tensor  # [B, T, K] new frames, PAD after a row's end
    lengths: Tensor  # [B] new frames per row (EOS included)
    steps: list[Step] = field(default_factory=list)
    wall_s: float = 0.0
    outputs: list | None = None  # decoded outputs (str, PIL.Image, waveform), one per row

    @property
    def stats(self) -> dict:
        return stats_of(self)

    def token_ids(self) -> list[list[list[int]]] | list[list[int]]:
        """Per row, the committed ids; K = 1 frames are flattened to a plain list."""
        rows = []
        for b in range(self.tokens.shape[0]):
            frames = self.tokens[b, : int(self.lengths[b])]
            rows.append(frames[:, 0].tolist() if frames.shape[-1] == 1 else frames.tolist())
        return rows


def stats_of(gen: Generation) -> dict:
    """Wall time, throughput and acceptance figures of one generation.

    ``mean_accepted`` is frames committed per target forward (1.0 for plain decoding); the
    ``acceptance_rate`` is accepted draft frames over drafted frames, per row, averaged.
    """
    new_tokens = int(gen.lengths.sum())
    forwards = sum(s.target_forwards for s in gen.steps)
    frames_per_row = sum(s.frames.shape[1] for s in gen.steps)
    drafted = sum(s.n_drafted for s in gen.steps) * gen.tokens.shape[0]
    accepted = sum(int(s.n_accepted.sum()) for s in gen.steps)
    return {
        "wall_s": gen.wall_s,
        "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / gen.wall_s if gen.wall_s > 0 else 0.0,
        "steps": len(gen.steps),
        "target_forwards": forwards,
        "mean_accepted": frames_per_row / forwards if forwards else 0.0,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "accepted_per_step": [s.frames.shape[1] for s in gen.steps],
    }


def check_frames(frames: Tensor, name: str = "frames") -> Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 3 or frames.dtype != torch.long:
        raise ValueError(f"{name} must be a LongTensor [B, T, K], got {getattr(frames, 'shape', type(frames))}")
    return frames
