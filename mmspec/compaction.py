"""Rows that have ended stop costing: the loop drops them from the batch (compaction).

With per-row commits a row that has ended (its EOS, or its budget) commits nothing, yet it would still ride
through every later draft and verify forward: at B = 8 a verify forward runs B x (N + 1) frames even when most
rows are done. When at least half of the rows still in the batch have ended, the loop drops them from the
target, the drafter and the sampler (``select_rows(index)``: keep these rows, in this order) and runs on with
the rest. The sampler keys reproducible noise by each row's place in the starting batch, so a kept row samples
exactly what it would have; the drafter's ``observe`` sees steps of its own (kept) rows.

What the caller sees does not change: ``Rows.widen`` turns each step back into one of the starting batch, a
dropped row with PAD frames and a count of 0 (as a row that has ended gets when it rides along), so
``assemble``, ``Generation`` and every user of ``stream`` get the same rows: token for token under greedy
decoding and the reproducible rule (the drafts of the kept rows may differ, which changes what a step verifies,
never what it commits); other sampling rules draw fewer uniforms from the shared generator once rows are gone,
so they commit another sample of the same distribution.

Only where the target and the drafter both declare ``selects_rows = True`` (an optional attribute, like
``per_row_commits``) and rows commit apart; anything else runs the whole batch to the end, as before.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .types import PAD, Step


def compacts(target, drafter) -> bool:
    """Whether rows that have ended may be dropped: the target and the drafter (if any) declare ``selects_rows``."""
    parts = [target] if drafter is None else [target, drafter]
    return all(bool(getattr(p, "selects_rows", False)) for p in parts)


class Rows:
    """Which rows of the starting batch of ``B`` the loop still runs: ``index [B']``, each kept row's starting row.

    ``on``: whether this run may drop rows (``compacts``, rows apart, the caller's ``compact``)."""

    def __init__(self, B: int, device: torch.device, on: bool):
        self.B, self.on = B, on
        self.index = torch.arange(B, device=device)  # [B'] the starting row of each row still in the batch
        self.pos: Tensor | None = None  # [B] every starting row's newest pos (a dropped row keeps its last)

    def due(self, ended: int) -> bool:
        """Whether to drop the rows that have ended: ``ended`` of the ``B'`` rows still in the batch, at least half,
        in a batch of more than one row (a batch where every row has ended stops instead)."""
        rows = self.index.shape[0]
        return self.on and rows > 1 and 0 < ended < rows and 2 * ended >= rows

    def drop(self, done: Tensor, target, drafter, sampler) -> Tensor:
        """Drop the rows that have ended (``done [B']``) from the target, the drafter and the sampler; returns the
        kept rows ``keep [B'']`` (indices into the current batch), for the loop's own per-row tensors."""
        keep = (~done).nonzero()[:, 0]  # [B'']
        target.select_rows(keep)
        if drafter is not None:
            drafter.select_rows(keep)
        sampler.select_rows(keep)
        self.index = self.index[keep]
        return keep

    def widen(self, step: Step) -> Step:
        """``step`` of the kept rows -> the same step of the starting batch: a dropped row gets PAD frames, no draft
        frames, 0 accepted, its last ``pos``, no path and a count of 0."""
        if not self.on:
            return step
        if self.pos is None:
            self.pos = step.pos.clone()
        self.pos = self.pos.index_copy(0, self.index, step.pos)  # [B]
        if self.index.shape[0] == self.B:
            return step
        B, rows = self.B, self.index

        def spread(x: Tensor, fill) -> Tensor:  # [B', ...] -> [B, ...], ``fill`` in the dropped rows
            return x.new_full((B, *x.shape[1:]), fill).index_copy(0, rows, x)

        path = None if step.path is None else spread(step.path, -1)
        return Step(spread(step.frames, PAD), spread(step.from_draft, False), step.n_drafted, spread(step.n_accepted, 0),
                    self.pos.clone(), path, spread(step.row_counts(), 0))
