"""Jacobi refinement as a drafter (Santilli et al. 2023; Speculative Jacobi Decoding, Teng et al. 2024).

The drafter keeps a window of guesses for the next frames. The verify forward scores the whole window
at once; the target's predictions at the positions after the committed prefix become the next guesses
(one Jacobi iteration), and the window is padded to k with an init policy. With the greedy rule this is
Jacobi decoding (never more steps than autoregressive, identical output). With the speculative rule it is
Speculative Jacobi Decoding: each guess keeps the distribution q it was sampled from (the target's
warped distribution of the previous iteration, the init policy's for fresh guesses), so acceptance with
min(1, p/q) stays exact.

Init policies: ``"pad"`` (a fixed token), ``"random"`` (uniform over the vocabulary), ``"repeat"``
(copy the newest frame), or a callable ``init(seq [B, S, K], n) -> [B, n, K]`` that guesses the n frames
after ``seq`` (committed output followed by the current guesses); adapters use it for spatial policies
such as copying the token above in an image grid; a callable with a ``bind(target)`` method is bound to
the target at ``start`` (e.g. to learn the grid width). Fresh init guesses are verified as q = one-hot (as in
SJD): accepted with probability p(x), which is exact for any guess drawn independently of the accept
randomness, and keeps relaxed (lossy) rules from accepting noise whose q would be tiny.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..protocols import Target
from ..sampling import Sampler
from ..types import Draft, Step, count

Init = Callable[[Tensor, int], Tensor]


class JacobiDrafter:
    wants_hidden = False  # reads no hidden state (mmspec.protocols.Drafter)

    def __init__(self, init: str | Init = "random", pad_id: int = 0):
        if not callable(init) and init not in ("pad", "random", "repeat"):
            raise ValueError(f"init must be 'pad', 'random', 'repeat' or a callable, got {init!r}")
        self.init, self.pad_id = init, count(pad_id, "pad_id", minimum=0)

    per_row_commits = True  # each row keeps its own committed output and window (``Step.counts``)
    selects_rows = True  # select_rows keeps the rows still running (mmspec.compaction)

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        self.sampler = sampler
        self.V = target.vocab_size
        if self.init == "pad" and self.pad_id >= self.V:
            raise ValueError(f"pad_id {self.pad_id} is outside the target's vocabulary (0..{self.V - 1})")
        bind = getattr(self.init, "bind", None)
        self._init = bind(target) if callable(bind) else self.init
        self.out: list[Tensor] | None = None  # per row its committed new frames [C_b, K]
        self.guess: Tensor | None = None  # [B, W, K]
        self.stale: Tensor | None = None  # [B, W] guesses past a row's verified part (init guesses replace them)
        self.q: Tensor | None = None  # [B, W, K, V] or None when every guess is deterministic

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']``, in that order: their output, guesses and q."""
        if self.out is not None:
            self.out = [self.out[i] for i in index.tolist()]
        self.guess, self.stale, self.q = (None if x is None else x[index] for x in (self.guess, self.stale, self.q))

    def _fresh(self, seq: Tensor, n: int) -> Tensor:
        """n init guesses after ``seq [B, S, K]``: tokens ``[B, n, K]`` (verified as q = one-hot)."""
        B, _, K = seq.shape
        if callable(self._init):
            guess = self._init(seq, n)
            if not isinstance(guess, Tensor) or guess.shape != (B, n, K) or guess.dtype != torch.long:
                raise ValueError(f"a Jacobi init must return a LongTensor [B, n, K] = [{B}, {n}, {K}], got "
                                 f"{getattr(guess, 'shape', type(guess).__name__)}")
            if bool(((guess < 0) | (guess >= self.V)).any()):
                raise ValueError(f"a Jacobi init guessed ids outside the target's vocabulary (0..{self.V - 1})")
            return guess.to(seq.device)
        if self.init == "pad":
            return seq.new_full((B, n, K), self.pad_id)
        if self.init == "repeat":
            return seq[:, -1:].expand(B, n, K).clone()
        return torch.randint(0, self.V, (B, n, K), generator=self.sampler.generator, device=seq.device)

    def propose(self, last: Tensor, k: int) -> Draft:
        guess = self.guess if self.guess is not None else last[:, :0]  # [B, W, K]
        B, W = guess.shape[:2]
        stale = self.stale if self.guess is not None else None
        valid = [W] * B if stale is None else (W - stale.sum(dim=1)).tolist()  # a row's verified guesses
        valid = [min(v, k) for v in valid]
        if min(valid) >= k:
            return self._draft(guess[:, :k], None if self.q is None else self.q[:, :k])
        # 1. pad each row's window with init guesses after what it reads (a row's stale guesses are replaced)
        reads_all = callable(self._init) and self.out is not None  # a callable init reads the committed output
        seqs = [torch.cat([self.out[b] if reads_all else last[b], guess[b, : valid[b]]]) for b in range(B)]
        if len(set(valid)) == 1 and len({s.shape[0] for s in seqs}) == 1:  # rows alike: one call for the batch
            fresh = list(self._fresh(torch.stack(seqs), k - valid[0]))
        else:
            fresh = [self._fresh(seq[None], k - n)[0] for seq, n in zip(seqs, valid)]
        tokens = torch.stack([torch.cat([guess[b, : valid[b]], fresh[b]]) for b in range(B)])  # [B, k, K]
        q = None
        if self.q is not None:
            one_hot = torch.nn.functional.one_hot
            q = torch.stack([torch.cat([self.q[b, : valid[b]], one_hot(fresh[b], self.V).to(self.q.dtype)])
                             for b in range(B)])
        return self._draft(tokens, q)

    def _draft(self, tokens: Tensor, q: Tensor | None) -> Draft:
        probs = None if q is None or self.sampler.greedy or self.sampler.keyed else q
        return Draft(tokens=tokens, probs=probs)

    def observe(self, step: Step, target_logits: Tensor) -> None:
        counts = step.row_counts()  # [B] frames each row committed
        new = [row[:n].clamp(min=0) for row, n in zip(step.frames, counts.tolist())]  # PAD after an end: any id
        self.out = new if self.out is None else [torch.cat([o, f]) for o, f in zip(self.out, new)]
        T = target_logits.shape[1]
        W = T - int(counts.masked_fill(counts == 0, T).min())  # the longest window a running row keeps
        index = counts[:, None] + torch.arange(max(W, 0), device=counts.device)[None]  # [B, W]
        self.stale = None if bool((index < T).all()) else index >= T  # [B, W] past a row's verified part
        index = index.clamp(max=T - 1)
        rest = target_logits.gather(1, index[..., None, None].expand(-1, -1, *target_logits.shape[2:])).float()
        if rest.shape[1] == 0:
            self.guess, self.q = None, None
            return
        # 2. One Jacobi iteration: the target's predictions become the next guesses.
        s = self.sampler
        if s.greedy:
            self.guess, self.q = rest.argmax(-1), None
        elif s.keyed:
            self.guess, self.q = s.keyed_choice(rest, step.pos + 1), None  # rest[:, 0] follows the committed frames
        else:
            self.q = s.probs(rest)
            self.guess = s.sample(self.q)
