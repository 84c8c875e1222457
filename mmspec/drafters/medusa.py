"""Medusa heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads"): M heads on the target's last hidden state guess the next M frames in one shot.

Chain: each head's argmax (or a sample, with q). Tree: each head's top-``width`` tokens as a static tree,
the cartesian product of ranks pruned to ``tree`` nodes by the prior ``prod 1 / (rank + 1)``, children
ordered by probability (rank); deterministic siblings (q = None) under every rule.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from ..sampling import Sampler
from ..types import Draft, Step, count
from . import selfdraft


def static_tree(depth: int, width: int, nodes: int) -> tuple[tuple[int, ...], ...]:
    """Rank tuples (one rank per depth) of a static tree: the ``nodes`` best by ``prod 1 / (rank + 1)``,
    breadth first, children by rank. Prefix-closed: a prefix scores at least as well and sorts first."""
    every = [t for d in range(1, depth + 1) for t in itertools.product(range(width), repeat=d)]
    score = {t: float(torch.tensor([1.0 / (r + 1) for r in t]).prod()) for t in every}
    best = sorted(every, key=lambda t: (-score[t], len(t), t))[:nodes]
    return tuple(sorted(best, key=lambda t: (len(t), t)))


class MedusaDrafter:
    """``MedusaDrafter(heads, tree=None, width=2)``: ``heads`` a ``mmspec.heads.MedusaHeads``; ``tree`` a node
    budget for a static tree of each head's top-``width`` (None: a chain of each head's choice); ``vocab``
    (token ids) a reduced draft vocabulary (``mmspec.drafters.int8.DraftVocab``)."""

    wants_hidden = True
    per_row_commits = True  # observe reads each row's newest state (``Step.counts``)
    selects_rows = True  # select_rows keeps the rows still running (mmspec.compaction)

    def __init__(self, heads, tree: int | None = None, width: int = 2, vocab: Tensor | None = None):
        self.heads, self.vocab = heads.eval(), vocab
        self.tree = None if tree is None else count(tree, "tree (node budget)")
        self.width = count(width, "width")
        self.ranks: dict[tuple[int, int], tuple] = {}  # static trees by (depth, width), made once per drafter

    def start(self, target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        selfdraft.check(target, self.heads.hidden, self.vocab)
        self.target, self.sampler = target, sampler
        self.head = selfdraft.head_of(target, self.vocab, self.heads.int8)
        self.K = target.num_codebooks
        self.state = None

    @torch.inference_mode()
    def propose(self, last: Tensor, k: int) -> Draft:
        depth = min(k, self.heads.num_heads)
        weight = next(self.heads.parameters())
        x = self.heads(self.state.to(weight.dtype))[:, :depth]  # [B, depth, H]
        logits = selfdraft.read(self.head, x, self.K)  # [B, depth, K, V]
        if self.tree is None:
            tokens, q = selfdraft.choose(self.sampler, logits, self.target.pos + 1)
            return Draft(tokens=tokens, probs=q)
        return self._tree(logits, depth)

    def _tree(self, logits: Tensor, depth: int) -> Draft:
        """Each head's top-``width`` as the static tree (K = 1 frames: codebook 0 ranks, all codebooks top-1)."""
        width = min(self.width, logits.shape[-1])
        if (depth, width) not in self.ranks:
            self.ranks[depth, width] = static_tree(depth, width, self.tree)
        ranks = self.ranks[depth, width]
        index = {t: i for i, t in enumerate(ranks)}
        parents = torch.tensor([index.get(t[:-1], -1) for t in ranks], device=logits.device)  # [N]
        at_depth = torch.tensor([len(t) - 1 for t in ranks], device=logits.device)
        at_rank = torch.tensor([t[-1] for t in ranks], device=logits.device)
        top = logits.topk(min(self.width, logits.shape[-1]), dim=-1).indices  # [B, depth, K, width]
        tokens = top[:, at_depth, :, 0].clone()  # [B, N, K]: other codebooks take their top-1
        tokens[..., 0] = top[:, at_depth, 0, at_rank]
        return Draft(tokens=tokens, parents=parents)

    def observe(self, step: Step, target_logits: Tensor) -> None:
        self.state = selfdraft.newest_state(self.target, step)  # [B, H]

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']``, in that order (the target drops them itself)."""
        self.state = self.state[index]
