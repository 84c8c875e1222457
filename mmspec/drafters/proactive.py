"""Proactive drafting (SJD-PAC, Kang et al., CVPR 2026): a coupled Jacobi window whose first positions
branch into a shallow tree.

After a rejection, the guesses right after the correction were coupled to distributions computed from
the rejected token, so the next step often accepts only one or two of them. SJD-PAC offers several
candidates there: at each of the window's first ``depth`` positions, besides the coupled guess x_d, up to
``width - 1`` more tokens are drawn WITHOUT replacement from the same stored distribution q_d (the target's
distribution at that position from the last verify forward; no extra forward). Sibling i is drawn from
q_d with the earlier siblings removed and renormalised, and that distribution is its stored proposal, so
``accept_tree.multi_candidate`` verifies the siblings by recursive rejection sampling: siblings in order,
the target's p replaced by norm((p - q_i)+) after each failure, the FIRST accepted sibling wins, and
when all fail the frame is drawn from the last residual. Every node at one depth has the same children
(the same tokens and proposals: drawn once per depth, independently of every test at smaller depths),
a full ``width``-ary tree over ``depth`` levels; the window continues as one chain below the coupled
guesses (the first child at every level). Nodes: the chain first (``0 .. D - 1``), then the other
siblings level by level, parents before children.

Observing a step, the chain is coupled exactly as in ``CoupledJacobiDrafter`` (maximal coupling): the
chain's positions after the committed frames, with the target distributions the verify forward computed
along the chain, whichever path the rule accepted. A level whose distribution has fewer than two tokens
of mass (a fresh init guess, q = one-hot) ends the tree. Sampled siblings need frames of one codebook
(``multi_candidate`` verifies sampled siblings of several codebooks not at all): with K > 1 the drafter
refuses to start when sampling.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..protocols import Target
from ..sampling import Sampler
from ..types import Draft, Step, count
from .coupled import CoupledJacobiDrafter
from .jacobi import Init


class ProactiveDrafter(CoupledJacobiDrafter):
    """``ProactiveDrafter(init="random", width=3, depth=2)``: see the module docstring. ``depth`` counts the
    branching positions after the newest committed frame (SJD-PAC's depth 3 counts that frame too)."""

    def __init__(self, init: str | Init = "random", width: int = 3, depth: int = 2, pad_id: int = 0):
        super().__init__(init=init, coupling="maximal", pad_id=pad_id)
        self.width, self.depth = count(width, "width (children per node)", 2), count(depth, "depth (branching levels)")

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        if target.num_codebooks > 1 and not (sampler.greedy or sampler.keyed):
            raise ValueError("proactive trees draw sampled siblings, which are verified for frames of one codebook "
                             f"only; this target has {target.num_codebooks}: use the coupled chain instead")
        super().start(target, sampler, prompt, max_new_tokens)

    def propose(self, last: Tensor, k: int) -> Draft:
        chain = super().propose(last, k)  # the coupled window [B, D, 1] with its proposals
        if chain.probs is None:  # greedy, keyed noise, or only fresh init guesses: a plain chain
            return chain
        return self._grow(chain)

    def observe(self, step: Step, target_logits: Tensor) -> None:
        D = self.drafted.shape[1] if self.drafted is not None else 0
        super().observe(step, target_logits[:, : D + 1])  # the chain's frames: [last, chain nodes]

    def _grow(self, chain: Draft) -> Draft:
        """The chain plus the siblings of its first ``depth`` positions (see the module docstring)."""
        B, D, _ = chain.tokens.shape
        tokens, probs, parents = [chain.tokens], [chain.probs], list(range(-1, D - 1))
        level = [-1]  # the nodes whose children are the next position
        for d in range(min(self.depth, D)):
            kids, kid_q = self._siblings(chain.tokens[:, d], chain.probs[:, d])  # [B, w, 1], [B, w, 1, V]
            if kids.shape[1] < 2:
                break
            nxt = [d]
            for parent in level:  # the chain's node d - 1 (-1: the newest frame) already has child 0: node d
                for i in range(1 if parent == d - 1 else 0, kids.shape[1]):
                    parents.append(parent)
                    nxt.append(len(parents) - 1)
                    tokens.append(kids[:, i: i + 1])
                    probs.append(kid_q[:, i: i + 1])
            level = nxt
        return Draft(tokens=torch.cat(tokens, 1), probs=torch.cat(probs, 1),
                     parents=torch.tensor(parents, dtype=torch.long, device=chain.tokens.device))

    def _siblings(self, x: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, 1]`` drawn from ``q [B, 1, V]`` and up to ``width - 1`` more tokens drawn without replacement,
        each with the distribution it was drawn from: ``[B, w, 1]``, ``[B, w, 1, V]``."""
        w = min(self.width, int((q > 0).sum(-1).min()))  # every row needs w tokens of mass
        kids, props, rest = [x], [q], q
        for _ in range(1, w):
            rest = rest.scatter(-1, kids[-1][..., None], 0.0)
            rest = rest / rest.sum(-1, keepdim=True)
            kids.append(self.sampler.sample(rest))
            props.append(rest)
        return torch.stack(kids, 1), torch.stack(props, 1)
