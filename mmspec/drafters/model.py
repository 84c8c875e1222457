"""Draft-model speculation: a small autoregressive model of the same modality and vocabulary drafts k
frames, keeping the distribution q each frame was sampled from (Leviathan et al. 2023; Chen et al. 2023).

The draft model is itself a Target adapter (same ``start / forward / keep``), so any model the
toolkit can verify with, it can also draft with. It starts on the same prompt with the run's real budget
(so a draft whose rules depend on the length, such as a fixed-length delay pattern, follows the target's).
Its cache is rolled back to the committed prefix after every step; committed frames it has not seen yet
wait in a backlog and are fed with the next ``last``. The draft object must be a second model, never
the target itself: they would share one cache.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..protocols import Target
from ..sampling import Sampler
from ..types import Draft, Step


class ModelDrafter:
    """``ModelDrafter(draft_target)`` drafts k frames per step.

    ``adaptive=True`` treats the loop's k as the longest draft: the length starts there, shrinks by 1
    after a step with a rejection and grows by 2 after a step whose drafts were all accepted; ``confidence``
    stops drafting early once every row's draft token has probability below it. Both decide the draft
    length from the drafter's own past and present, never from the current step's accept randomness,
    so every rule stays exact. ``confidence`` costs one device sync per drafted frame.
    """

    def __init__(self, model: Target, adaptive: bool = False, confidence: float | None = None):
        if not isinstance(model, Target):
            raise ValueError(f"the draft model must be an mmspec Target (e.g. TextTarget), got {type(model).__name__}")
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
        if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
                                       or not 0 < confidence < 1):
            raise ValueError(f"confidence must be in (0, 1) or None, got {confidence!r}")
        self.model, self.adaptive, self.confidence = model, adaptive, confidence

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        if self.model is target:
            raise ValueError("the draft model is the target object itself; load the model a second time to draft "
                             "with it (the two would share one cache)")
        if self.model.num_codebooks != target.num_codebooks:
            raise ValueError(
                f"draft model has {self.model.num_codebooks} codebooks, the target {target.num_codebooks}: they must match"
            )
        target.check_draft(self.model)  # the adapter refuses pairs it cannot verify (e.g. different tokenizers)
        self.target, self.sampler = target, sampler
        self.model.start(prompt, max_new_tokens)
        self.backlog: list[Tensor] = []  # committed frames [B, n, K] the draft model has not been fed
        self.k_now, self.k_max = None, 0  # adaptive draft length, reset per generation
        self.fed_drafts = 0

    def _fit(self, logits: Tensor) -> Tensor:
        """Draft logits over the target's vocabulary: cut embedding padding, or pad with -inf."""
        V = self.target.vocab_size
        if logits.shape[-1] > V:
            return logits[..., :V]
        if logits.shape[-1] < V:
            pad = logits.new_full(logits.shape[:-1] + (V - logits.shape[-1],), float("-inf"))
            return torch.cat([logits, pad], dim=-1)
        return logits

    def _choose(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """One draft frame from ``logits [B, 1, K, V]``: tokens ``[B, 1, K]`` and q (None if deterministic)."""
        s = self.sampler
        if s.greedy:
            return logits.argmax(-1), None
        if s.keyed:  # same keyed noise as the target: Gumbel coupling; q is not needed by that rule
            return s.keyed_choice(logits, self.model.pos.clone()), None
        q = s.probs(logits)  # [B, 1, K, V]
        return s.sample(q), q

    def propose(self, last: Tensor, k: int) -> Draft:
        if self.adaptive:
            self.k_max = max(k, self.k_max)
            self.k_now = self.k_now or k
            k = min(self.k_now, k)  # k is also capped by the frames left
        # 1. Catch up on committed frames (the backlog ends with ``last``).
        frames = torch.cat(self.backlog, dim=1).clamp(min=0) if self.backlog else last  # [B, n, K]
        self.backlog = []
        logits = self._fit(self.model.forward(frames)[:, -1:]).float()  # [B, 1, K, V]
        tokens, probs = [], []
        # 2. Sample k frames one by one; feed all but the last.
        for i in range(k):
            tok, q = self._choose(logits)
            tokens.append(tok)
            probs.append(q)
            if i == k - 1 or (self.confidence is not None and self._unsure(logits, tok)):
                break
            logits = self._fit(self.model.forward(tok)).float()
        self.fed_drafts = len(tokens) - 1
        tokens_t = torch.cat(tokens, dim=1)  # [B, k, K]
        probs_t = None if probs[0] is None else torch.cat(probs, dim=1)  # [B, k, K, V]
        return Draft(tokens=tokens_t, probs=probs_t)

    def _unsure(self, logits: Tensor, tok: Tensor) -> bool:
        """True when every row's drafted token has draft probability below ``confidence``."""
        p = torch.softmax(logits, dim=-1).gather(-1, tok[..., None])  # [B, 1, K, 1]
        return bool((p < self.confidence).all())

    def observe(self, step: Step, target_logits: Tensor) -> None:
        if self.adaptive and step.n_drafted and self.k_now is not None:
            all_in = bool((step.n_accepted >= step.n_drafted).all())
            self.k_now = min(self.k_max, self.k_now + 2) if all_in else max(1, self.k_now - 1)
        # Keep the drafts that were committed by every row; the rest of the step waits in the backlog.
        n = step.frames.shape[1]
        keep = min(n - 1, self.fed_drafts) if step.n_drafted else 0
        if step.n_drafted:
            self.model.keep(self.model.pos - self.fed_drafts + keep)
        self.fed_drafts = 0
        self.backlog.append(step.frames[:, keep:])
