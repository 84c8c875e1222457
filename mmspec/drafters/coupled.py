"""Coupled Jacobi drafts (Speculative Coupled Decoding / MC-SJD, So et al. 2026; the "adaptive continuation"
of SJD-PAC, Kang et al. 2026): Speculative Jacobi Decoding whose successive drafts agree.

Plain SJD (``JacobiDrafter``) redraws every window position from the target's new distribution p_j each
step, independently of the guess x_j it had, so successive windows almost never agree and the target's
context for later positions keeps moving. A coupled drafter makes the next guess y_j from x_j and p_j:

* ``"maximal"`` coupling: keep x_j when u_j < p_j(x_j) / q_j(x_j), else draw y_j from norm((p_j - q_j)+).
  Marginally y_j ~ p_j, and y_j = x_j with probability 1 - TV(p_j, q_j), the most any coupling allows.
* ``"gumbel"`` coupling: y_j = argmax(log p_j + g_j) with Gumbel noise g_j fixed per absolute position
  (``Sampler.gumbel``, keyed by seed, row and position) until the position is committed: the same noise
  keeps the same choice wherever p_j moved little. Marginally y_j ~ p_j as well.

Either way the next draft at position j is tested with **q_j = p_j**, the distribution it was coupled to.
Exactness (with ``accept.speculative``) needs only that, given everything that decided the positions
before j (their drafts, tests and corrections), the tested draft at j is distributed as its stored
proposal: y_j ~ p_j given x_j's own law q_j, and its coupling randomness (u_j, the residual draw, g_j) is
used by no decision at an earlier position. Storing the OLD proposal q_j for kept guesses breaks this
(a kept guess is not distributed as q_j any more): tests/test_coupled.py shows the bias.

The rule's draws and the coupling are independent: positions up to the step's committed frames are
decided by the accept rule; the drafter couples the positions after them (their verdicts in the rule are
discarded) with its own draws. Fresh init guesses (``init``, e.g. the image grid's ``left``/``above``)
are q = one-hot, as in SJD. Greedy decoding and keyed noise (the ``reproducible`` rule) run plain Jacobi,
which already is the keyed Gumbel coupling there. Works for frames of K codebooks: each codebook is
coupled on its own (they are independent given the past).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..protocols import Target
from ..sampling import Sampler
from ..types import Draft, Step
from .jacobi import Init, JacobiDrafter

COUPLINGS = ("maximal", "gumbel")


class CoupledJacobiDrafter(JacobiDrafter):
    """``CoupledJacobiDrafter(init="random", coupling="maximal" | "gumbel")``: see the module docstring. Its coupled
    window assumes every row commits the same count, so a batch runs in lockstep (``per_row_commits`` False)."""

    per_row_commits = False

    def __init__(self, init: str | Init = "random", coupling: str = "maximal", pad_id: int = 0):
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
        super().__init__(init=init, pad_id=pad_id)
        self.coupling = coupling

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        super().start(target, sampler, prompt, max_new_tokens)
        self.drafted: Tensor | None = None  # the last draft's tokens [B, D, K]
        self.drafted_q: Tensor | None = None  # and its proposals [B, D, K, V] (None: all one-hot)

    def propose(self, last: Tensor, k: int) -> Draft:
        draft = super().propose(last, k)
        # Remember what was drafted and its proposal (one-hot for fresh init guesses) for the coupling.
        self.drafted = draft.tokens  # [B, D, K]
        self.drafted_q = draft.probs
        return draft

    def observe(self, step: Step, target_logits: Tensor) -> None:
        s = self.sampler
        if s.greedy or s.keyed or self.drafted is None:  # Jacobi decoding / keyed Gumbel; the prefill
            return super().observe(step, target_logits)
        new = list(step.frames.clamp(min=0))  # lockstep: every row committed the same frames count [n, K]
        self.out = new if self.out is None else [torch.cat([o, f]) for o, f in zip(self.out, new)]
        self.stale = None  # no row's window runs past another's
        n, D = step.frames.shape[1], target_logits.shape[1] - 1
        if n > D:  # every drafted frame and the bonus committed: the window starts afresh
            self.guess, self.q = None, None
            return
        # 1. The target's distributions after the committed frames: p[:, j] for window slot n + j.
        p = s.probs(target_logits[:, n:])  # [B, D + 1 - n, K, V]
        x = self.drafted[:, n:D]  # [B, D - n, K] guesses the rule did not decide
        q = self._proposal(x, n, D, p)  # [B, D - n, K, V]
        # 2. Couple each undecided guess to p; the slot after the draft is drawn from p alone.
        positions = step.pos[:, None] + 1 + torch.arange(D + 1 - n, device=p.device)  # [B, D + 1 - n]
        self.guess, self.q = self.couple(x, q, p, positions)

    def _proposal(self, x: Tensor, n: int, D: int, p: Tensor) -> Tensor:
        if self.drafted_q is None:  # every guess was a fresh init guess
            return torch.nn.functional.one_hot(x, p.shape[-1]).to(p.dtype)
        return self.drafted_q[:, n:D].to(p.dtype)

    def couple(self, x: Tensor, q: Tensor, p: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Next guesses ``[B, W, K]`` and their stored proposals ``[B, W, K, V]`` (W = D + 1 - n) from the
        undecided guesses ``x [B, W - 1, K]`` drawn from ``q``, the target's ``p [B, W, K, V]`` and the
        window's absolute ``positions [B, W]``. The stored proposal is p itself (see the module docstring)."""
        if self.coupling == "gumbel":
            return gumbel_choice(self.sampler, p, positions), p
        return torch.cat([maximal(self.sampler, x, q, p[:, :-1]), self.sampler.sample(p[:, -1:])], dim=1), p


def maximal(sampler: Sampler, x: Tensor, q: Tensor, p: Tensor) -> Tensor:
    """Maximal coupling of ``x [..., K] ~ q [..., K, V]`` to ``p``: x where u < p(x) / q(x), else a draw from
    norm((p - q)+) (p itself where that is empty): a sample of p equal to x as often as possible."""
    p_x = p.gather(-1, x[..., None])[..., 0]  # [..., K]
    q_x = q.gather(-1, x[..., None])[..., 0]
    keep = sampler.uniform(p_x.shape).to(p_x.dtype) * q_x < p_x
    residual = (p - q).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p)
    return torch.where(keep, x, sampler.sample(residual))


def gumbel_choice(sampler: Sampler, p: Tensor, positions: Tensor) -> Tensor:
    """argmax(log p + g) with Gumbel noise keyed by (seed, row, absolute position): ``[B, W, K, V] -> [B, W, K]``.
    Tokens of zero mass (warped away) are never chosen."""
    B, W, K, V = p.shape
    return (torch.log(p) + sampler.gumbel(positions, K, V)).argmax(-1)
