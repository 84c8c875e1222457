"""Training-free drafting for codec frames: per-codebook lookup (with an optional corpus table).

Whole-frame prompt lookup (``mmspec.PromptLookupDrafter``) rarely fires on codec streams: a frame of K
codes from V-sized codebooks almost never repeats exactly. Each codebook's own stream repeats far more
often (silence, steady vowels, the coarse codebook's slow changes), so this drafter guesses every
codebook separately:

1. the code that followed the most recent earlier occurrence of the current code in that codebook's
   committed stream (prompt lookup with n = 1, per codebook);
2. else the corpus table ``prior[k, code]`` (the most frequent next code in training codes, optional,
   ``fit_prior``), built once from the codec's codes of a corpus;
3. else the current code again (repeat-last-frame).

Guesses are chained for k frames and are deterministic (q = one-hot), so the drafter pairs with every
accept rule. Frames are the adapter's delayed steps; a codebook's own sequence is the same in the
delayed and the plain layout, so the table fits raw codec codes ``[K, T]``.

``lookup_init`` is the same guess as a Jacobi init policy (``--drafter jacobi --init codec-lookup``).

With ``tree=N`` the drafter branches: after a frame, up to ``width`` distinct alternatives (the chained
guess above; then, per codebook, the followers of earlier occurrences of the current code, the newest
first, each codebook falling back to the chained guess; then the corpus table's frame and the repeated
frame) are siblings, K codebooks per node, all deterministic. Nodes enter the trie in order of how many
non-first alternatives their path takes, then of depth: the chained guess to depth k first, then its
one-step detours, until N nodes.
"""
from __future__ import annotations

import heapq
from typing import Any, Iterable

import torch
from torch import Tensor

from mmspec.protocols import Target
from mmspec.sampling import Sampler
from mmspec.drafters.trie import Trie, stack
from mmspec.types import Draft, Step, count


def continue_codebooks(seq: Tensor, n: int, prior: Tensor | None = None) -> Tensor:
    """Guess the n frames after ``seq [B, S, K]`` codebook by codebook: ``[B, n, K]``."""
    out = []
    for _ in range(n):
        B, S, K = seq.shape
        cur = seq[:, -1]  # [B, K]
        # 1. Most recent earlier occurrence of the current code, per row and codebook.
        match = seq[:, :-1] == cur[:, None]  # [B, S - 1, K]
        where = torch.where(match, torch.arange(S - 1, device=seq.device)[None, :, None], -1).amax(dim=1) if S > 1 \
            else cur.new_full((B, K), -1)  # [B, K]
        follower = seq.gather(1, (where + 1).clamp(max=S - 1)[:, None])[:, 0]  # [B, K]
        # 2. The corpus table, 3. repeat.
        guess = cur
        if prior is not None:
            table = prior.to(seq.device)[torch.arange(K, device=seq.device)[None, :], cur.clamp(max=prior.shape[1] - 1)]
            guess = torch.where(table >= 0, table, cur)
        guess = torch.where(where >= 0, follower, guess)  # [B, K]
        out.append(guess)
        seq = torch.cat([seq, guess[:, None]], dim=1)
    return torch.stack(out, dim=1) if out else seq[:, :0]  # [B, n, K]


def alternatives(seq: Tensor, width: int, prior: Tensor | None = None) -> list[tuple]:
    """Up to ``width`` distinct guesses of the frame after ``seq [S, K]``, the chained guess first."""
    first = continue_codebooks(seq[None], 1, prior)[0, 0].tolist()  # [K]
    cur = seq[-1]
    followers = []  # per codebook: the codes that followed the current code, the newest first, distinct
    for c in range(seq.shape[1]):
        hits = (seq[:-1, c] == cur[c]).nonzero()[:, 0].flip(0)
        followers.append(list(dict.fromkeys(seq[hits + 1, c].tolist())))
    frames = [tuple(first)]
    for i in range(1, width):
        frames.append(tuple(f[i] if i < len(f) else first[c] for c, f in enumerate(followers)))
    if prior is not None:
        table = prior.to(seq.device)[torch.arange(seq.shape[1], device=seq.device), cur.clamp(max=prior.shape[1] - 1)]
        frames.append(tuple(torch.where(table >= 0, table, cur).tolist()))
    frames.append(tuple(cur.tolist()))
    return list(dict.fromkeys(frames))[:width]


def lookup_init(seq: Tensor, n: int) -> Tensor:
    """Jacobi init policy: the per-codebook lookup guess of the n frames after ``seq [B, S, K]``."""
    return continue_codebooks(seq, n)


def fit_prior(codes: Iterable[Tensor], vocab_size: int) -> Tensor:
    """Corpus codes (each ``[K, T]``) -> ``prior [K, V]``: the most frequent next code (-1 where unseen)."""
    counts = None
    for c in codes:
        c = torch.as_tensor(c, dtype=torch.long)  # [K, T]
        K = c.shape[0]
        if counts is None:
            counts = torch.zeros(K, vocab_size * vocab_size, dtype=torch.long)
        pairs = c[:, :-1] * vocab_size + c[:, 1:]  # [K, T - 1]
        counts.scatter_add_(1, pairs, torch.ones_like(pairs))
    if counts is None:
        raise ValueError("fit_prior needs at least one code array")
    counts = counts.view(-1, vocab_size, vocab_size)  # [K, V, V]
    best = counts.argmax(-1)  # [K, V]
    return torch.where(counts.sum(-1) > 0, best, -1)


class CodecLookupDrafter:
    """Per-codebook lookup drafter (``start / propose / observe``); ``prior [K, V]`` from ``fit_prior``;
    ``tree=N`` drafts a trie of N nodes with up to ``width`` alternatives per frame (see above)."""

    wants_hidden = False  # reads no hidden state (mmspec.protocols.Drafter)
    per_row_commits = True  # each row keeps its own history (``Step.counts``)
    selects_rows = True  # select_rows keeps the rows still running (mmspec.compaction)

    def __init__(self, prior: Tensor | None = None, tree: int | None = None, width: int = 2):
        if prior is not None and (prior.dim() != 2 or prior.dtype != torch.long):
            raise ValueError("prior must be a LongTensor [K, V] from fit_prior")
        self.prior = prior
        self.tree = None if tree is None else count(tree, "tree (node budget)")
        self.width = count(width, "width (children per node)")

    def start(self, target: Target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        rows = [f.clone() for f in target.prompt_frames()]  # per row [L_b, K]
        if self.prior is not None and self.prior.shape[0] != target.num_codebooks:
            raise ValueError(f"prior has {self.prior.shape[0]} codebooks, the target {target.num_codebooks}")
        self.history = rows  # per row [S_b, K]: its prompt frames, then its committed frames
        self.vocab_size = target.vocab_size

    def propose(self, last: Tensor, k: int) -> Draft:
        # ``observe`` has already appended ``last`` (every step, the first one too) to the history.
        if self.tree is not None:
            return stack([self._trie(seq, k) for seq in self.history], self.vocab_size, last.shape[-1], last.device)
        return Draft(tokens=torch.cat([continue_codebooks(seq[None], k, self.prior) for seq in self.history]))  # [B, k, K]

    def _trie(self, seq: Tensor, k: int) -> Trie:
        """One row's trie after ``seq [S, K]``: nodes by (detours from the chained guess, depth)."""
        trie = Trie(self.tree, k)
        heap = [(int(r > 0), 1, r, -1, frame, seq) for r, frame in enumerate(alternatives(seq, self.width, self.prior))]
        order = len(heap)  # the tie-breaker: nodes pushed earlier first
        while heap and not trie.full:
            detours, depth, _, parent, frame, before = heapq.heappop(heap)
            node = trie.child(parent, frame)
            if node is None or depth >= k:
                continue
            after = torch.cat([before, before.new_tensor([frame])])  # [S + depth, K]
            for rank, nxt in enumerate(alternatives(after, self.width, self.prior)):
                heapq.heappush(heap, (detours + (rank > 0), depth + 1, order, node, nxt, after))
                order += 1
        return trie

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']``, in that order."""
        self.history = [self.history[i] for i in index.tolist()]

    def observe(self, step: Step, target_logits: Tensor) -> None:
        # Each row its own count; rows after their end hold PAD: they never end a step, so any id will do there.
        counts = step.row_counts().tolist()
        self.history = [torch.cat([seq, step.frames[b, :n].clamp(min=0)]) for b, (seq, n) in
                        enumerate(zip(self.history, counts))]
