"""Core value types shared by every modality.

Everything the core sees is frames of K tokens: ``[B, T, K]``. Text and image tokens have K = 1; a
codec LM with parallel heads has K = number of codebooks.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .renamed import Stats


def count(value, name: str, minimum: int = 1) -> int:
    """An integer parameter (Python or NumPy integer, not a bool) >= ``minimum``, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
        bad = isinstance(self.temperature, bool) or not isinstance(self.temperature, numbers.Real)
        if bad or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.top_k is not None:
            object.__setattr__(self, "top_k", count(self.top_k, "top_k (or None)"))
        if self.top_p is not None:
            bad = isinstance(self.top_p, bool) or not isinstance(self.top_p, numbers.Real)
            if bad or not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
            object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Draft:
    """What a drafter proposes for one step: N nodes, a chain or a tree (``mmspec.tree``).

    ``probs`` is the distribution each node was SAMPLED from (after the same warping as the target);
    ``None`` means the draft is deterministic given the past (prompt lookup, greedy Jacobi, a greedy
    draft model), which the speculative rule treats as q = one-hot. ``parents`` is the topology: per node
    its parent node, -1 for a child of the newest committed frame, shared by the batch ``[N]`` or per row
    ``[B, N]``; ``None`` is the chain ``-1, 0, 1, ...``. Siblings must differ (a trie).
    """

    tokens: Tensor  # [B, N, K]
    probs: Tensor | None = None  # [B, N, K, V]
    parents: Tensor | None = None  # [N] or [B, N]

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    @property
    def is_chain(self) -> bool:
        from .tree import is_chain

        return is_chain(self.parents)


@dataclass
class Verdict:
    """What an accept rule decided: the accepted path's frames, then one recovered/bonus frame, then PAD.

    ``path`` names the accepted nodes in order (-1 after ``n_accepted``), ``[B, D]`` with D the tree's
    depth; None for a chain (the accepted nodes are ``0 .. n_accepted - 1``)."""

    tokens: Tensor  # [B, D + 1, K]
    n_accepted: Tensor  # [B] accepted draft frames per row
    path: Tensor | None = None  # [B, D]


@dataclass
class Step:
    """One draft -> verify -> accept step, as the loop commits it: each row its own accepted frames + 1
    (``counts``), or the batch minimum where the target or the drafter needs rows in lockstep
    (``mmspec.loop.rows_apart``)."""

    frames: Tensor  # [B, n, K] committed frames, n = the most any row committed (PAD past a row's count, after EOS)
    from_draft: Tensor  # [B, n] True where the frame is an accepted draft frame
    n_drafted: int  # N: nodes drafted (a chain's length)
    n_accepted: Tensor  # [B] accepted draft frames per row (before the count is capped; 0: a row that had ended)
    pos: Tensor  # [B] the target's ``pos`` after this step: frames in its cache, prompt included (the newest
    # committed frame is not among them: it is fed with the next verify forward)
    path: Tensor | None = None  # [B, n - 1] the draft nodes committed from each row's accepted path, -1 past its
    # count (None: chain)
    counts: Tensor | None = None  # [B] frames committed per row (0: a row that had ended); None: n for every row

    def row_counts(self) -> Tensor:
        """``counts``, or n for every row where none were given: ``[B]``."""
        if self.counts is not None:
            return self.counts
        return torch.full((self.frames.shape[0],), self.frames.shape[1], dtype=torch.long, device=self.frames.device)

    def newest(self) -> Tensor:
        """Each row's newest committed frame's index into ``frames`` ``[B]`` (counts - 1, 0 for a row that had ended)."""
        return (self.row_counts() - 1).clamp(min=0)


@dataclass
class Generation:
    """The result of ``generate``: tokens per row and the statistics of the run."""

    tokens: Tensor  # [B, T, K] new frames, PAD after a row's end
    lengths: Tensor  # [B] new frames per row (EOS included)
    steps: list[Step] = field(default_factory=list)
    wall_s: float = 0.0
    outputs: list | None = None  # decoded outputs, one per row: str, or an object with ``save(path)``

    @property
    def stats(self) -> dict:
        return stats_of(self)

    def save(self, path: str) -> list[str]:
        """Write every row's output: ``path`` for one row, ``stem_0.ext, stem_1.ext ...`` for a batch.

        Text is written as UTF-8; any other output saves itself (``output.save(path)``: images, audio).
        Missing folders are created; an unwritable place is a ValueError before anything is written.
        """
        from .files import numbered, writable

        if not self.outputs:
            raise ValueError("this generation has no decoded outputs to save")
        paths = numbered(writable(path), len(self.outputs))
        for out, file in zip(self.outputs, paths):
            if isinstance(out, str):
                with open(file, "w", encoding="utf-8") as f:
                    f.write(out)
            else:
                out.save(file)
        return paths

    def token_ids(self) -> list[list[list[int]]] | list[list[int]]:
        """Per row, the committed ids; K = 1 frames are flattened to a plain list."""
        rows = []
        for b in range(self.tokens.shape[0]):
            frames = self.tokens[b, : int(self.lengths[b])]
            rows.append(frames[:, 0].tolist() if frames.shape[-1] == 1 else frames.tolist())
        return rows


def stats_of(gen: Generation) -> dict:
    """Wall time, throughput and acceptance figures of one generation.

    Every step is one target forward (the first is the prefill). ``mean_accepted`` is frames committed
    per target forward (1.0 for plain decoding), per row over the steps it took part in (committed at least one
    frame), averaged over the rows; the ``acceptance_rate`` is accepted draft frames over
    drafted frames (tree nodes) over the rows that took part in each step (an ended row drafts nothing); ``nodes_per_forward`` is the frames each verify
    forward scored (``last`` + the drafted nodes), averaged over the steps after the prefill. A ``Stats``
    dict: a renamed key (``target_forwards``) raises a KeyError naming its new name (``steps``).
    """
    new_tokens = int(gen.lengths.sum())
    forwards = len(gen.steps)
    live = [s.row_counts() > 0 for s in gen.steps]  # [B] per step: the rows that took part in it
    drafted = sum(s.n_drafted * int(r.sum()) for s, r in zip(gen.steps, live))
    accepted = sum(int(s.n_accepted[r].sum()) for s, r in zip(gen.steps, live))
    mean = 0.0
    if forwards:
        counts = torch.stack([s.row_counts().cpu() for s in gen.steps])  # [steps, B]
        mean = float((counts.sum(0) / (counts > 0).sum(0).clamp(min=1)).mean())
    return Stats({
        "wall_s": gen.wall_s,
        "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / gen.wall_s if gen.wall_s > 0 else 0.0,
        "steps": forwards,
        "mean_accepted": mean,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "nodes_per_forward": sum(s.n_drafted + 1 for s in gen.steps[1:]) / max(1, len(gen.steps) - 1),
        "accepted_per_step": [s.frames.shape[1] for s in gen.steps],
    })


def check_frames(frames: Tensor, name: str = "frames") -> Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 3 or frames.dtype != torch.long:
        raise ValueError(f"{name} must be a LongTensor [B, T, K], got {getattr(frames, 'shape', type(frames))}")
    return frames
