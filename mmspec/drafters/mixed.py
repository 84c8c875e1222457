"""A mixture of drafters: the drafts (chains or trees) of several drafters merged into one trie.

``MixedDrafter([a, b, ...], nodes=N)`` asks every part for its draft, then inserts the parts' nodes into
one trie per row, part by part and each part's nodes in its own order (parents before children): a
node equal to one already there (same parent, same frame) is shared, and when the node budget binds the
earlier parts' nodes are the ones kept (a node whose parent did not fit is dropped with it). Rows are
filled to one node count (``mmspec.drafters.trie``). ``start`` and ``observe`` go to every part; a part
observes the target's logits at its own nodes (gathered from the merged tree; a node dropped by the
budget gets the logits of the newest committed frame), so a part that learns from the verify forward
(Jacobi, lookahead) reads predictions along its own draft.

Exactness: the merged tree is always verified as DETERMINISTIC (``probs=None``: q = one-hot for every
node), also when a part sampled its draft (a draft model under a sampling rule): a deterministic child x
is accepted with the residual's p(x), and on rejection p(x) is set to 0 and p renormalised. That is
rejection sampling without replacement, which commits a frame distributed exactly as p for ANY set of
children chosen before the step's accept randomness is drawn (the parts draft before the verify forward,
from the past and their own draws only), so the mixture is lossless under every lossless rule. The price
is acceptance: a sampled node is accepted with p(x) instead of min(1, p(x) / q(x)); mixing with a draft
model works best at temperature 0 or with the reproducible rule, where it drafts deterministic top choices.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .. import tree
from ..protocols import DRAFTER, Drafter, Target
from ..sampling import Sampler
from ..types import Draft, Step, count
from .trie import Trie, stack


def checked_parts(drafters: Sequence[Drafter], what: str, least: int = 1) -> list[Drafter]:
    """The parts of a combination of drafters (``MixedDrafter``, ``CascadeDrafter``) as a list: at least
    ``least`` of them (else a ValueError saying they must be ``what``), each a Drafter, no object twice."""
    parts = list(drafters) if isinstance(drafters, (list, tuple)) else None
    if not parts or len(parts) < least:
        raise ValueError(f"drafters must be {what}, got {drafters!r}")
    for part in parts:
        if not isinstance(part, Drafter):
            raise ValueError(f"drafters: every part must {DRAFTER}, got {type(part).__name__}")
    if len({id(p) for p in parts}) < len(parts):
        raise ValueError("drafters: the same drafter object appears twice (each part keeps its own state)")
    return parts


class MixedDrafter:
    """``MixedDrafter([drafter_a, drafter_b, ...], nodes=N)``: one deduplicated trie of at most N nodes
    (None: every distinct node of every part) from the parts' drafts; see the module docstring."""

    def __init__(self, drafters: Sequence[Drafter], nodes: int | None = None):
        self.parts = checked_parts(drafters, "a non-empty list of drafters")
        self.nodes = None if nodes is None else count(nodes, "nodes (node budget)")
        self.wants_hidden = any(p.wants_hidden for p in self.parts)  # a self-drafter part
        self.per_row_commits = all(bool(getattr(p, "per_row_commits", False)) for p in self.parts)  # every part
        self.selects_rows = all(bool(getattr(p, "selects_rows", False)) for p in self.parts)  # every part

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        self.vocab_size = target.vocab_size
        self.maps: list[Tensor] | None = None  # per part: its nodes' nodes in the merged tree [B, N_part] (-1: dropped)
        for part in self.parts:
            part.start(target, sampler, prompt, max_new_tokens)

    def propose(self, last: Tensor, k: int) -> Draft:
        B, _, K = last.shape
        drafts = [part.propose(last, k) for part in self.parts]  # 1. every part drafts after ``last``
        tries = [Trie(self.nodes, k) for _ in range(B)]
        self.maps = [self._insert(tries, draft) for draft in drafts]  # 2. merged part by part
        return stack(tries, self.vocab_size, K, last.device)  # 3. deterministic (see the module docstring)

    @staticmethod
    def _insert(tries: list[Trie], draft: Draft) -> Tensor:
        """Insert one part's nodes into the rows' tries; returns where each node went ``[B, N_part]``."""
        B, N, _ = draft.tokens.shape
        parents = tree.per_row(draft.parents, B, N, draft.tokens.device).tolist()
        where = []
        for trie, frames, ups in zip(tries, draft.tokens.tolist(), parents):
            row: list[int] = []
            for frame, up in zip(frames, ups):
                parent = -1 if up < 0 else row[up]
                node = None if parent == -2 else trie.child(parent, tuple(frame))
                row.append(-2 if node is None else node)  # -2: dropped (its children too)
            where.append(row)
        return torch.tensor(where, dtype=torch.long, device=draft.tokens.device).reshape(B, N)

    def observe(self, step: Step, target_logits: Tensor) -> None:
        maps, self.maps = self.maps, None
        for i, part in enumerate(self.parts):
            part.observe(step, target_logits if maps is None else self._logits_at(maps[i], target_logits))

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']`` in every part (the merged tree's maps live within one step)."""
        self.maps = None if self.maps is None else [m[index] for m in self.maps]
        for part in self.parts:
            part.select_rows(index)

    @staticmethod
    def _logits_at(where: Tensor, target_logits: Tensor) -> Tensor:
        """The verify logits ``[B, N + 1, K, V]`` at one part's frames ``[last, its nodes]``: ``[B, N_part + 1, K, V]``."""
        B = where.shape[0]
        frame = torch.cat([where.new_zeros(B, 1), (where + 1).clamp(min=0)], dim=1)  # dropped -> ``last``
        if int(frame.max()) >= target_logits.shape[1]:  # the step verified no draft (the run's last frame)
            frame = frame.clamp(max=target_logits.shape[1] - 1)
        return target_logits.gather(1, frame[..., None, None].expand(-1, -1, *target_logits.shape[2:]))
