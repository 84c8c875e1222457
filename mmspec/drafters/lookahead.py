"""Lookahead drafting (Fu et al. 2024), in the shared loop.

A Jacobi window runs ahead of the output (its trajectory is the "lookahead branch"); every verify forward
harvests n-grams from that trajectory and from the committed output into a pool keyed by their first
frame. When the pool holds n-grams that start with the newest frame, the drafter proposes the best one
(the most recently harvested: the "verification branch", one candidate per step); otherwise it proposes
the Jacobi window itself, which keeps the trajectory moving. Deterministic drafts (q = one-hot) under
the greedy rule; with sampling rules the window guesses carry their q as in ``JacobiDrafter``.

The original runs both branches in one forward with a 2-D attention mask; here each forward is either a
candidate or the window, which keeps every adapter's plain causal cache. With ``tree=N`` the
verification branch checks several pool candidates at once: every n-gram that starts with the newest
frame (the newest first), merged into one trie of at most N nodes (equal prefixes shared). After a
tree step the Jacobi window starts afresh (the verify logits were not over its trajectory).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from ..protocols import Target
from ..sampling import Sampler
from ..types import Draft, Step, count
from .jacobi import Init, JacobiDrafter
from .ngram import frame_ids
from .trie import Trie, stack


class LookaheadDrafter:
    wants_hidden = False  # reads no hidden state (mmspec.protocols.Drafter)
    per_row_commits = True  # its Jacobi window and n-gram pools are per row
    selects_rows = True  # select_rows keeps the rows still running (mmspec.compaction)

    def __init__(self, ngram: int = 4, pool_size: int = 4, init: str | Init = "repeat", tree: int | None = None):
        if not isinstance(ngram, int) or ngram < 2:
            raise ValueError(f"ngram must be an integer >= 2, got {ngram!r}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an integer >= 1, got {pool_size!r}")
        self.ngram, self.pool_size = ngram, pool_size
        self.tree = None if tree is None else count(tree, "tree (node budget)")
        self.branched = False  # the last proposal was a tree of pool candidates
        self.jacobi = JacobiDrafter(init=init)

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        self.jacobi.start(target, sampler, prompt, max_new_tokens)
        self.V = target.vocab_size
        self.pools: list[OrderedDict] = [OrderedDict() for _ in target.prompt_frames()]
        self.tail = [f[-(self.ngram - 1) :].clone() for f in target.prompt_frames()]  # per row [<= N-1, K]
        for b, frames in enumerate(target.prompt_frames()):
            self._harvest(b, frames)

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']``, in that order: their pools, tails and Jacobi window."""
        picked = index.tolist()
        self.pools, self.tail = [self.pools[i] for i in picked], [self.tail[i] for i in picked]
        self.jacobi.select_rows(index)

    def _harvest(self, b: int, seq: Tensor) -> None:
        """Add every n-gram of ``seq [L, K]`` to row b's pool, keyed by its first frame."""
        N, pool = self.ngram, self.pools[b]
        if seq.shape[0] < N:
            return
        keys = frame_ids(seq, self.V).tolist()
        for i in range(seq.shape[0] - N + 1):
            cands = pool.setdefault(keys[i], OrderedDict())
            gram = seq[i + 1 : i + N]  # [N - 1, K]
            cands[tuple(gram.flatten().tolist())] = gram
            cands.move_to_end(tuple(gram.flatten().tolist()))
            while len(cands) > self.pool_size:
                cands.popitem(last=False)

    def propose(self, last: Tensor, k: int) -> Draft:
        keys = frame_ids(last[:, 0], self.V).tolist()
        found = [self.pools[b].get(key) for b, key in enumerate(keys)]
        self.branched = False
        if not any(found):
            return self.jacobi.propose(last, k)
        if self.tree is not None:
            return self._trie(found, last, k)
        B, _, K = last.shape
        D = min(k, self.ngram - 1)
        tokens = last.expand(B, D, K).clone()
        for b, cands in enumerate(found):
            if cands:
                gram = next(reversed(cands.values()))  # the newest candidate
                tokens[b] = gram[:D]
        return Draft(tokens=tokens)

    def _trie(self, found: list, last: Tensor, k: int) -> Draft:
        """The candidates of every row (the newest first) merged into one trie of at most ``tree`` nodes."""
        tries = []
        for cands in found:
            trie = Trie(self.tree, min(k, self.ngram - 1))
            for gram in reversed((cands or {}).values()):
                trie.add(gram.tolist())
            tries.append(trie)
        self.branched = True
        return stack(tries, self.V, last.shape[-1], last.device)

    def observe(self, step: Step, target_logits: Tensor) -> None:
        self.jacobi.observe(step, target_logits)
        if self.branched:  # the verify forward was over the candidates' tree, not the window
            self.jacobi.guess = self.jacobi.q = None
            self.branched = False
        # Harvest the committed output and the trajectory: each committed frame followed by the
        # target's greedy predictions for the positions after it.
        guess = self.jacobi.guess
        for b in range(step.frames.shape[0]):
            new = step.frames[b]
            new = new[new[:, 0] >= 0]
            seq = torch.cat([self.tail[b], new])
            self._harvest(b, seq)
            if guess is not None and len(seq):
                self._harvest(b, torch.cat([seq[-1:], guess[b]]))
            self.tail[b] = seq[-(self.ngram - 1) :]
