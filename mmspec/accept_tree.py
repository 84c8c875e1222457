"""Accept rules on token trees: which root-to-node path of a draft tree the target keeps, plus one
recovered/bonus frame. The rules in ``mmspec.accept`` call these when a draft is not a chain.

``target_logits [B, N + 1, K, V]`` come from one forward over the frames ``[last, node 0, ...]``; frame
``f`` predicts the children of frame ``f`` (node j's frame is j + 1). A verdict lists the accepted nodes
in ``path [B, D]`` (D = the tree's depth), its frames in ``tokens [B, D + 1, K]``.

* ``match`` (greedy, reproducible, and typical's test): a node passes when its test against its
  parent frame holds; the target keeps the deepest node whose whole path passes (the first such node
  when siblings tie). Greedy: the node equals the target's argmax, so the kept path is exactly the
  frames greedy decoding would produce, however many siblings were tried. Reproducible: the node equals
  the Gumbel-max choice with noise keyed by (row, position); siblings share their position's noise, so
  the committed frames are the keyed samples themselves, exact and identical to decoding without a draft.
* ``multi_candidate`` (speculative sampling and relaxed variants; SpecInfer, Miao et al. 2024; Chen et
  al. 2023 for i.i.d. siblings): at each frame the children are tried in order. A child x drawn from q
  is accepted with ``accept_prob`` (min(1, p(x) / q(x)) for the exact rule); on rejection p becomes
  norm(max(0, p - q)) and the next child is tried against it; when every child fails, the frame is
  sampled from the residual p. A deterministic child (q = one-hot) is accepted with p(x), and on
  rejection p(x) is set to 0 and p renormalised. Exactness: each trial is one step of speculative
  sampling against the current residual, which leaves the frame distributed as the residual was; by
  induction over the siblings the accepted-or-recovered frame is distributed as p (the i.i.d. case is
  Chen et al.'s multi-draft argument; deterministic siblings are rejection sampling without
  replacement). Siblings drawn WITHOUT replacement (recursive rejection sampling, Jeon et al. 2024;
  SJD-PAC's proactive trees) are this same walk when each node's ``probs`` is the distribution it was
  drawn from: q with the earlier siblings removed and renormalised; the FIRST accepted sibling wins
  (keeping the deepest accepted path instead is biased: tests/test_coupled.py). With K codebooks a frame is one joint outcome x = (x_1 .. x_K) under the product p;
  siblings must then be deterministic, and the residual p restricted to the frames not yet rejected is
  sampled by drawing from p until the draw is outside the rejected set (exact rejection sampling).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import tree
from .sampling import Sampler
from .types import PAD, Draft, Verdict

MAX_REDRAWS = 10_000  # rejection sampling of a residual: more draws than this means the residual is empty


def _verdict(draft: Draft, parents: Tensor, node: Tensor, final: Tensor) -> Verdict:
    """The path down to ``node [B]`` (-1: none accepted), its frames, then ``final [B, K]``, then PAD."""
    B, N, K = draft.tokens.shape
    depth = tree.depths(parents)  # [B, N]
    D = int(depth.max())
    path = tree.path_to(parents, node, D)  # [B, D]
    n_accepted = (path >= 0).sum(-1)  # [B]
    frames = draft.tokens.gather(1, path.clamp(min=0)[..., None].expand(B, D, K))  # [B, D, K]
    index = torch.arange(D + 1, device=node.device)[None, :]  # [1, D + 1]
    tokens = torch.cat([frames, final[:, None]], dim=1)  # [B, D + 1, K]
    tokens = torch.where((index == n_accepted[:, None])[..., None], final[:, None], tokens)
    tokens = tokens.masked_fill((index > n_accepted[:, None])[..., None], PAD)
    return Verdict(tokens=tokens, n_accepted=n_accepted, path=path)


def deepest(parents: Tensor, passed: Tensor) -> Tensor:
    """The deepest node whose whole path passed (``passed [B, N]``), the first among equals; -1 if none."""
    best = []
    for row, good in zip(parents.tolist(), passed.tolist()):  # a few small ints: a list walk beats torch operations
        depth, ok, node = tree.depth_list(row), [], (0, -1)  # node: (depth, -index) of the best so far
        for j, p in enumerate(row):  # parents come first, so one pass settles every path
            ok.append(good[j] and (p < 0 or ok[p]))
            if ok[j] and (depth[j], -j) > node:
                node = (depth[j], -j)
        best.append(-node[1] if node[0] else -1)
    return torch.tensor(best, dtype=torch.long, device=passed.device)


def match(draft: Draft, choice: Tensor) -> Verdict:
    """Keep the deepest path whose every node equals ``choice [B, N + 1, K]`` at its parent frame; then
    commit the choice at the path's last frame (greedy: argmax; reproducible: the keyed sample)."""
    B, N, K = draft.tokens.shape
    parents = tree.per_row(draft.parents, B, N, draft.tokens.device)
    want = choice.gather(1, (parents + 1)[..., None].expand(B, N, K))  # [B, N, K] the parent frame's choice
    node = deepest(parents, (draft.tokens == want).all(-1))
    final = choice.gather(1, (node + 1)[:, None, None].expand(B, 1, K))[:, 0]  # [B, K]
    return _verdict(draft, parents, node, final)


def frame_positions(draft: Draft, pos: Tensor) -> Tensor:
    """The position each verify frame predicts, ``[B, N + 1]``: ``pos`` for ``last``, + depth for a node."""
    B, N, _ = draft.tokens.shape
    parents = tree.per_row(draft.parents, B, N, draft.tokens.device)
    return pos[:, None] + torch.cat([torch.zeros_like(parents[:, :1]), tree.depths(parents)], dim=1)


def typical(draft: Draft, p: Tensor, threshold: Tensor, final: Tensor) -> Verdict:
    """Typical acceptance on a tree: a node passes when its mass under its parent frame's ``p [B, N + 1, K, V]``
    exceeds that frame's ``threshold [B, N + 1, K]``; ``final [B, N + 1, K]`` is the frame taken after it."""
    B, N, K = draft.tokens.shape
    parents = tree.per_row(draft.parents, B, N, draft.tokens.device)
    frame = (parents + 1)[..., None]  # [B, N, 1]
    p_parent = p.gather(1, frame[..., None].expand(B, N, K, p.shape[-1]))  # [B, N, K, V]
    p_x = p_parent.gather(-1, draft.tokens[..., None])[..., 0]  # [B, N, K]
    passed = (p_x > threshold.gather(1, frame.expand(B, N, K))).all(-1)  # [B, N]
    node = deepest(parents, passed)
    return _verdict(draft, parents, node, final.gather(1, (node + 1)[:, None, None].expand(B, 1, K))[:, 0])


def multi_candidate(draft: Draft, p: Tensor, sampler: Sampler, accept_prob: Callable[..., Tensor] | None = None) -> Verdict:
    """Multi-candidate speculative sampling down the tree (see the module docstring), row by row.

    ``p [B, N + 1, K, V]`` are the target's warped distributions per verify frame. ``accept_prob(p, q, x,
    p_x, q_x)`` as in ``mmspec.accept.rejection`` (shapes ``[1, 1, 1, V]`` / ``[1, 1, 1]``) for relaxed
    rules; None is the exact min(1, p(x) / q(x)). Frames of several codebooks take the exact rule only,
    with deterministic siblings."""
    B, N, K = draft.tokens.shape
    if K > 1 and (draft.probs is not None or accept_prob is not None):
        raise ValueError("a tree of frames with several codebooks is verified by sampling only with the exact rule "
                         "and deterministic drafts (sampled siblings need K = 1); draft a chain, or decode greedily")
    parents = tree.per_row(draft.parents, B, N, draft.tokens.device)
    nodes, finals = zip(*(_walk(draft, parents[b], p[b], sampler, accept_prob, b) for b in range(B)))
    node = torch.tensor(nodes, dtype=torch.long, device=draft.tokens.device)
    return _verdict(draft, parents, node, torch.stack(finals))


def _walk(draft: Draft, parents: Tensor, p: Tensor, sampler: Sampler, accept_prob, b: int) -> tuple[int, Tensor]:
    """One row: from the root, try each frame's children in order; returns (last accepted node, final frame)."""
    children: dict[int, list[int]] = {}
    for j, parent in enumerate(parents.tolist()):
        children.setdefault(parent, []).append(j)
    joint = draft.tokens.shape[-1] > 1
    node, frame_p = -1, p[0]  # [K, V] the (residual) distribution of the frame after ``node``
    while True:
        rejected: list[Tensor] = []  # joint frames tried and rejected at this level
        for j in children.get(node, []):
            x = draft.tokens[b, j]  # [K]
            if joint:
                accepted = _try_joint(frame_p, x, rejected, sampler)
            else:
                q = _one_hot(x, frame_p) if draft.probs is None else draft.probs[b, j].to(frame_p.dtype)  # [1, V]
                accepted = _try_single(frame_p, q, x, sampler, accept_prob)
                frame_p = frame_p if accepted else _residual(frame_p, q)  # norm(max(0, p - q)) after a rejection
            if accepted:
                node, frame_p = j, p[j + 1]
                break
            rejected.append(x)
        else:
            return node, _sample_outside(frame_p, rejected, sampler) if joint else sampler.sample(frame_p)


def _one_hot(x: Tensor, p: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(x, p.shape[-1]).to(p.dtype)


def _try_single(p: Tensor, q: Tensor, x: Tensor, sampler: Sampler, accept_prob) -> bool:
    """Accept ``x [1]`` drawn from ``q [1, V]`` against ``p [1, V]`` (q one-hot: a deterministic child)."""
    p_x, q_x = p.gather(-1, x[:, None])[:, 0], q.gather(-1, x[:, None])[:, 0]  # [1]
    if accept_prob is None:
        prob = float(p_x / q_x) if float(q_x) > 0 else 0.0
    else:
        prob = float(accept_prob(p[None, None], q[None, None], x[None, None], p_x[None, None], q_x[None, None]).reshape(-1)[0])
    return float(sampler.uniform((1,))) < prob


def _try_joint(p: Tensor, x: Tensor, rejected: list, sampler: Sampler) -> bool:
    """Accept the deterministic frame ``x [K]`` with its probability under ``p [K, V]`` restricted to the
    frames not rejected yet."""
    if any(bool((x == r).all()) for r in rejected):
        return False
    left = 1.0 - sum(_joint(p, r) for r in rejected)
    return float(sampler.uniform((1,))) * left < _joint(p, x)


def _joint(p: Tensor, x: Tensor) -> float:
    """Probability of the frame ``x [K]`` under the product of ``p [K, V]``."""
    return float(p.gather(-1, x[:, None]).prod())


def _residual(p: Tensor, q: Tensor) -> Tensor:
    residual = (p - q).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp(min=1e-30), p)


def _sample_outside(p: Tensor, rejected: list, sampler: Sampler) -> Tensor:
    """A frame ``[K]`` from ``p [K, V]`` conditioned on not being a rejected frame (exact: draw until outside)."""
    for _ in range(MAX_REDRAWS):
        x = sampler.sample(p)  # [K]
        if not any(bool((x == r).all()) for r in rejected):
            return x
    raise RuntimeError("the target gives the rejected drafts all its mass; no frame is left to sample")
