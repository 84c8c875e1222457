"""Draft tries: frame sequences merged into one draft tree per row (equal prefixes share nodes, siblings
differ), and the rows stacked into one ``Draft``. Shared by the drafters that branch on retrieved or
merged candidates (prompt lookup, lookahead, codec lookup, the mixed drafter).

Rows whose tries are smaller than the largest one are filled up with filler nodes (a frame not yet among
a node's children, the lowest ids first), so the batch shares one node count; a filler node is a
deterministic guess like any other, so every rule stays exact.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..types import Draft

Frame = tuple  # one frame of K token ids


class Trie:
    """One row's draft tree: at most ``budget`` nodes (None: no cap), depth at most ``depth``."""

    def __init__(self, budget: int | None, depth: int):
        self.budget, self.max_depth = budget, depth
        self.frames: list[Frame] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.index: dict[tuple[int, Frame], int] = {}  # (parent node, frame) -> node

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def full(self) -> bool:
        return self.budget is not None and len(self.frames) >= self.budget

    def depth_of(self, node: int) -> int:
        return 0 if node < 0 else self.depths[node]

    def child(self, parent: int, frame: Frame) -> int | None:
        """The node of ``frame`` under ``parent`` (-1: the root), created when new; None when there is no
        room (budget spent or too deep)."""
        node = self.index.get((parent, frame))
        if node is not None:
            return node
        depth = self.depth_of(parent) + 1
        if self.full or depth > self.max_depth:
            return None
        node = self.index[parent, frame] = len(self.frames)
        self.frames.append(frame)
        self.parents.append(parent)
        self.depths.append(depth)
        return node

    def add(self, frames: Iterable[Frame], parent: int = -1) -> list[int]:
        """Insert a sequence of frames after ``parent``; returns its nodes (fewer when the room ends)."""
        nodes = []
        for frame in frames:
            parent = self.child(parent, tuple(frame))
            if parent is None:
                break
            nodes.append(parent)
        return nodes

    def fill(self, n: int, vocab_size: int, K: int) -> None:
        """Add filler nodes until the trie has ``n``: under the root first, then under each node in turn."""
        self.budget = max(self.budget or 0, n)
        parent = -1
        while len(self.frames) < n and parent < len(self.frames):
            for v in range(vocab_size if self.depth_of(parent) < self.max_depth else 0):
                if len(self.frames) < n:
                    self.child(parent, (v,) + (0,) * (K - 1))  # an existing child is left as it is
            parent += 1
        if len(self.frames) < n:
            raise RuntimeError(f"cannot fill a draft tree to {n} nodes at depth <= {self.max_depth}")


def stack(tries: list[Trie], vocab_size: int, K: int, device) -> Draft:
    """One ``Draft`` of the rows' tries (filled to the largest): tokens ``[B, N, K]``, parents ``[N]`` when
    every row has the same topology, else ``[B, N]``; an empty draft when every trie is empty."""
    B, N = len(tries), max(len(t) for t in tries)
    if N == 0:
        return Draft(tokens=torch.zeros(B, 0, K, dtype=torch.long, device=device))
    for t in tries:
        t.fill(N, vocab_size, K)
    tokens = torch.tensor([t.frames for t in tries], dtype=torch.long, device=device)  # [B, N, K]
    rows = [t.parents for t in tries]
    parents = torch.tensor(rows[0] if all(r == rows[0] for r in rows) else rows, dtype=torch.long, device=device)
    return Draft(tokens=tokens, parents=parents)
