"""Token-tree topology: parents, depths, ancestor masks and paths, shared by the loop, the rules, the
targets and the drafters.

A tree of N nodes is ``parents [N]`` (shared by the batch) or ``[B, N]`` (per row): node j's parent
node, or -1 for a child of the frame before the tree. Parents come before their children
(``parents[j] < j``), so a node's depth and ancestors follow in one pass. A chain is ``-1, 0, 1, ...``.

The topology is a few dozen small integers per row, so ``depths``, ``ancestors`` and ``path_to`` walk it as Python
lists (one pass, parents first) and return tensors: a loop of torch operations over the nodes cost 0.1-0.2 ms per call
on a CPU, several calls a verify step (BENCHMARKS.md "Session 11").

Two frames of reference appear:

* **nodes** of a ``Draft``: -1 means "child of the newest committed frame";
* **frames** of a verify forward ``[last, node 0, node 1, ...]``: -1 means "child of the cached
  prefix"; ``forward_parents`` turns the one into the other.
"""
from __future__ import annotations

import torch
from torch import Tensor


def chain(n: int, device=None) -> Tensor:
    """Parents of a chain of n nodes: ``[-1, 0, 1, ..., n - 2]``."""
    return torch.arange(n, device=device) - 1


def per_row(parents: Tensor | None, B: int, N: int, device=None) -> Tensor:
    """``parents`` as ``[B, N]`` (None = a chain)."""
    if parents is None:
        parents = chain(N, device)
    return parents.expand(B, N) if parents.dim() == 1 else parents


def check(parents: Tensor, N: int, B: int | None = None) -> Tensor:
    """Validate a topology ``[N]`` or ``[B, N]`` (LongTensor, -1 <= parent < own index); returns it."""
    if not isinstance(parents, Tensor) or parents.dtype != torch.long or parents.dim() not in (1, 2):
        raise ValueError(f"parents must be a LongTensor [N] or [B, N], got {getattr(parents, 'shape', parents)!r}")
    if parents.shape[-1] != N or (parents.dim() == 2 and B is not None and parents.shape[0] != B):
        raise ValueError(f"parents has shape {tuple(parents.shape)}; the draft has {N} nodes"
                         + (f" and {B} rows" if B is not None else ""))
    index = torch.arange(N, device=parents.device)
    if bool(((parents < -1) | (parents >= index)).any()):
        raise ValueError("parents[j] must be -1 or the index of an earlier node (parents come before children)")
    return parents


def is_chain(parents: Tensor | None) -> bool:
    if parents is None:
        return True
    return bool((parents == chain(parents.shape[-1], parents.device)).all())


def forward_parents(parents: Tensor | None, N: int, device=None) -> Tensor | None:
    """Node parents -> parents over the verify frames ``[last, nodes...]`` (None stays None: a chain)."""
    if parents is None:
        return None
    lead = parents.new_full(parents.shape[:-1] + (1,), -1)
    return torch.cat([lead, parents + 1], dim=-1)


def _rows(parents: Tensor) -> list[list[int]]:
    """``parents [..., N]`` as one list of N ints per leading index."""
    return parents.reshape(-1, parents.shape[-1]).tolist()


def depth_list(row: list[int]) -> list[int]:
    """Depths of one row's nodes from its parents as a list (a child of -1 has depth 1)."""
    depth: list[int] = []
    for p in row:
        depth.append(1 if p < 0 else depth[p] + 1)
    return depth


def depths(parents: Tensor) -> Tensor:
    """Depth of every node, ``[..., N]`` (a child of -1 has depth 1)."""
    if parents.shape[-1] == 0:
        return torch.zeros_like(parents)
    out = [depth_list(row) for row in _rows(parents)]
    return torch.tensor(out, dtype=parents.dtype).view(parents.shape).to(parents.device)


def ancestors(parents: Tensor) -> Tensor:
    """``mask [..., N, N]``: ``mask[..., i, j]`` is True when node j is node i or one of its ancestors."""
    N = parents.shape[-1]
    if N == 0:
        return torch.zeros(*parents.shape, 0, dtype=torch.bool, device=parents.device)
    seen = []
    for row in _rows(parents):
        sets: list[list[bool]] = []
        for i, p in enumerate(row):
            line = list(sets[p]) if p >= 0 else [False] * N
            line[i] = True
            sets.append(line)
        seen.append(sets)
    return torch.tensor(seen, dtype=torch.bool).view(*parents.shape, N).to(parents.device)


def path_to(parents: Tensor, node: Tensor, length: int) -> Tensor:
    """The nodes from the root down to ``node [B]`` (-1 = none), ``[B, length]`` padded with -1 after the
    node's depth. ``parents [B, N]``."""
    out = []
    for row, n in zip(_rows(parents), node.tolist()):
        path = []
        while n >= 0:
            path.append(n)
            n = row[n]
        path = path[::-1][max(0, len(path) - length):]  # a path deeper than length: its last nodes
        out.append(path + [-1] * (length - len(path)))
    return torch.tensor(out, dtype=parents.dtype).view(len(out), length).to(parents.device)
