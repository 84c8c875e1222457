"""A cascade of drafters: the first one that has a guess drafts the step.

``CascadeDrafter([a, b, ...])`` asks its parts in order and returns the first non-empty draft as it is
(chain or tree, with its q), so a retrieval drafter that drafts only when it finds a match (prompt lookup)
can hand the other steps to a model (``--drafter "prompt-lookup|heads"``): a step costs one drafter's
guess and one verify forward over that drafter's nodes, where a mixture (``A+B``) pays for every part and
verifies the union.

Exactness: which part drafts depends only on what was committed before the step (each part's own state),
never on the step's accept randomness, and the chosen draft is verified by the rule with the distribution
it was drawn from; so the cascade is lossless under every lossless rule, as its parts are. Every part
observes every step (a part that learns from the verify forward reads the target's logits along the draft
that was verified, whichever part made it).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from ..protocols import Drafter, Target
from ..sampling import Sampler
from ..types import Draft, Step
from .mixed import checked_parts


class CascadeDrafter:
    """``CascadeDrafter([drafter_a, drafter_b, ...])``: each step, the first part with a non-empty draft."""

    def __init__(self, drafters: Sequence[Drafter]):
        self.parts = checked_parts(drafters, "a list of at least two drafters", least=2)
        self.wants_hidden = any(p.wants_hidden for p in self.parts)  # a self-drafter part
        self.per_row_commits = all(bool(getattr(p, "per_row_commits", False)) for p in self.parts)  # every part
        self.selects_rows = all(bool(getattr(p, "selects_rows", False)) for p in self.parts)  # every part
        self.chosen: list[int] = []  # which part drafted each step (for statistics)

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        self.chosen = []
        for part in self.parts:
            part.start(target, sampler, prompt, max_new_tokens)

    def propose(self, last: Tensor, k: int) -> Draft:
        draft = None
        for i, part in enumerate(self.parts):
            draft = part.propose(last, k)
            if draft.size > 0:
                self.chosen.append(i)
                return draft
        self.chosen.append(-1)
        return draft  # every part came back empty: a step without a draft

    def observe(self, step: Step, target_logits: Tensor) -> None:
        for part in self.parts:
            part.observe(step, target_logits)

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']`` in every part."""
        for part in self.parts:
            part.select_rows(index)
