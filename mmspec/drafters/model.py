"""Draft-model speculation: a small autoregressive model of the same modality and vocabulary drafts k
frames, keeping the distribution q each frame was sampled from (Leviathan et al. 2023; Chen et al. 2023),
or a token tree of up to N nodes (SpecInfer, Miao et al. 2024; EAGLE-2's dynamic trees, Li et al. 2024).

The draft model is itself a Target adapter (same ``start / forward / keep``), so any model the
toolkit can verify with, it can also draft with. It starts on the same prompt with the run's real budget
(so a draft whose rules depend on the length, such as a fixed-length delay pattern, follows the target's).
The draft object must be a second model, never the target itself: they would share one cache.

Cache bookkeeping: the drafter remembers the frames it fed the draft model beyond the committed prefix
(a chain, or a tree fed in one tree forward). After a step it walks the committed frames down what it
fed, matching frames by content, so it keeps exactly the committed frames the model has already seen
(``keep(pos)`` for a chain, ``keep(pos, path)`` for a tree), whichever drafter's branch they came from
(``MixedDrafter``); the rest wait in a backlog and are fed with the next ``last``.

Trees (``tree=N``): each depth is one draft forward with tree attention over every expanded node so far
(the protocol's tree forward sees the cached prefix and a node's ancestors, so a deeper level re-feeds
the expanded nodes above it; the cache is rolled back in between, and the last forward's frames stay
for ``keep(pos, path)``). Children per expanded node, ``width`` of them:

* greedy: the top-``width`` frames by draft probability (deterministic; a frame of K codebooks takes
  the w-th choice of every codebook);
* reproducible (keyed noise): the keyed Gumbel-max choice (coupled with the target's noise) first, then
  the next top choices: deterministic given the past;
* sampling rules, K = 1, static trees: ``width`` i.i.d. draws from q, with q passed as ``probs``
  (multi-candidate speculative sampling with i.i.d. siblings); K > 1 or ``dynamic``: the deterministic
  top choices (sampled siblings of several codebooks cannot be verified, and choosing among sampled
  siblings by their probability would make them no longer i.i.d. draws from q).

Static (``dynamic=False``): every node is expanded, breadth first, until N nodes or depth k. Dynamic
(EAGLE-2): at each depth the ``width`` nodes of highest cumulative draft probability (the product along
the path) are expanded; at the end the N nodes of highest cumulative probability are kept (ancestors
come first among equals, so the kept set is ancestor-closed).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import tree as topology
from ..protocols import Target
from ..sampling import Sampler
from ..types import Draft, Step, count


class ModelDrafter:
    """``ModelDrafter(draft_target)`` drafts k frames per step; ``tree=N`` drafts a tree of N nodes.

    ``adaptive=True`` treats the loop's k as the longest draft: the length starts there, shrinks by 1
    after a step with a rejection and grows by 2 after a step whose drafts were all accepted; ``confidence``
    stops drafting early once every row's draft token has probability below it. Both decide the draft
    length from the drafter's own past and present, never from the current step's accept randomness,
    so every rule stays exact. ``confidence`` costs one device sync per drafted frame. Both shape a chain.

    ``tree`` (node budget N), ``width`` (children per expanded node) and ``dynamic`` (EAGLE-2 expansion
    and reranking) shape a tree; the loop's k is its depth. See the module docstring.
    """

    wants_hidden = False  # reads no hidden state (mmspec.protocols.Drafter)

    @property
    def per_row_commits(self) -> bool:
        """Rows may commit different counts (``mmspec.loop.rows_apart``) where the draft model's cache can hold
        them apart too (its own ``per_row_commits``); otherwise the batch stays in lockstep."""
        return bool(getattr(self.model, "per_row_commits", False))

    @property
    def selects_rows(self) -> bool:
        """Rows that have ended may be dropped (``mmspec.compaction``) where the draft model can drop them too."""
        return self.per_row_commits and bool(getattr(self.model, "selects_rows", False))

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']``, in that order: the draft model's, and the backlog of each."""
        self.model.select_rows(index)
        self.base = self.base[index]
        if self.backlog is not None:
            self.backlog, self.waiting = self.backlog[index], self.waiting[index]
            self.backlog = self.backlog[:, : max(1, int(self.waiting.max()))]
        if self.fed is not None:  # between steps nothing is fed past the prefix; kept aligned all the same
            frames, parents = self.fed
            self.fed = (frames[index], parents[index] if parents is not None and parents.dim() == 2 else parents)

    def __init__(self, model: Target, adaptive: bool = False, confidence: float | None = None,
                 tree: int | None = None, width: int = 2, dynamic: bool = False):
        if not isinstance(model, Target):
            raise ValueError(f"the draft model must be an mmspec Target (e.g. TextTarget), got {type(model).__name__}")
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
        if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
                                       or not 0 < confidence < 1):
            raise ValueError(f"confidence must be in (0, 1) or None, got {confidence!r}")
        if not isinstance(dynamic, bool):
            raise ValueError(f"dynamic must be True or False, got {dynamic!r}")
        self.tree = None if tree is None else count(tree, "tree (node budget)")
        self.width = count(width, "width (children per node)")
        if self.tree is not None and (adaptive or confidence is not None):
            raise ValueError("adaptive and confidence shape a chain; with tree (a node budget) leave them unset")
        if dynamic and self.tree is None:
            raise ValueError("dynamic trees need a node budget: set tree (e.g. tree=16)")
        self.model, self.adaptive, self.confidence, self.dynamic = model, adaptive, confidence, dynamic

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
        self.backlog: Tensor | None = None  # committed frames [B, L, K] the draft model has not been fed, each
        self.waiting: Tensor | None = None  # row's own first (``waiting [B]`` of them), then filler
        self.k_now, self.k_max = None, 0  # adaptive draft length, reset per generation
        self.fed: tuple[Tensor, Tensor | None] | None = None  # frames fed past the prefix [B, F, K], parents [B, F]
        self.base = self.model.pos.clone()  # [B] the draft model's committed frames

    def _fit(self, logits: Tensor) -> Tensor:
        """Draft logits over the target's vocabulary: cut embedding padding, or pad with -inf."""
        V = self.target.vocab_size
        if logits.shape[-1] > V:
            return logits[..., :V]
        if logits.shape[-1] < V:
            pad = logits.new_full(logits.shape[:-1] + (V - logits.shape[-1],), float("-inf"))
            return torch.cat([logits, pad], dim=-1)
        return logits

    def propose(self, last: Tensor, k: int) -> Draft:
        # 1. Catch up on committed frames (the backlog ends with ``last``).
        logits = self._catch_up(last)  # [B, 1, K, V]
        self.base = self.model.pos.clone()
        # 2. Draft a chain or a tree after ``last``.
        if self.tree is None:
            return self._chain(logits, k)
        return self._tree(logits, k)

    def _catch_up(self, last: Tensor) -> Tensor:
        """Feed the backlog (each row its own frames, then filler the draft model forgets at once: holes in its
        cache); the draft logits after each row's newest frame ``[B, 1, K, V]``."""
        if self.backlog is None:
            return self._fit(self.model.forward(last)[:, -1:]).float()
        frames, waiting = self.backlog.clamp(min=0), self.waiting  # [B, L, K], [B]
        self.backlog = self.waiting = None
        logits = self.model.forward(frames)  # [B, L, K, V]
        L = frames.shape[1]
        if bool((waiting < L).any()):
            self.model.keep(self.model.pos - (L - waiting))
        index = (waiting - 1).clamp(min=0)[:, None, None, None].expand(-1, 1, *logits.shape[2:])
        return self._fit(logits.gather(1, index)).float()

    # -- chains ------------------------------------------------------------------------------------
    def _choose(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """One draft frame from ``logits [B, 1, K, V]``: tokens ``[B, 1, K]`` and q (None if deterministic)."""
        s = self.sampler
        if s.greedy:
            return logits.argmax(-1), None
        if s.keyed:  # same keyed noise as the target: Gumbel coupling; q is not needed by that rule
            return s.keyed_choice(logits, self.model.pos.clone()), None
        q = s.probs(logits)  # [B, 1, K, V]
        return s.sample(q), q

    def _chain(self, logits: Tensor, k: int) -> Draft:
        if self.adaptive:
            self.k_max = max(k, self.k_max)
            self.k_now = self.k_now or k
            k = min(self.k_now, k)  # k is also capped by the frames left
        tokens, probs = [], []
        # Sample k frames one by one; feed all but the last.
        for i in range(k):
            tok, q = self._choose(logits)
            tokens.append(tok)
            probs.append(q)
            if i == k - 1 or (self.confidence is not None and self._unsure(logits, tok)):
                break
            logits = self._fit(self.model.forward(tok)).float()
        tokens_t = torch.cat(tokens, dim=1)  # [B, k, K]
        self.fed = (tokens_t[:, : len(tokens) - 1], None)  # a chain, fed frame by frame
        probs_t = None if probs[0] is None else torch.cat(probs, dim=1)  # [B, k, K, V]
        return Draft(tokens=tokens_t, probs=probs_t)

    def _unsure(self, logits: Tensor, tok: Tensor) -> bool:
        """True when every row's drafted token has draft probability below ``confidence``."""
        p = torch.softmax(logits, dim=-1).gather(-1, tok[..., None])  # [B, 1, K, 1]
        return bool((p < self.confidence).all())

    # -- trees -------------------------------------------------------------------------------------
    def _children(self, logits: Tensor, depth: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Children of F nodes at ``depth`` (0: ``last``) from their ``logits [B, F, K, V]``: tokens
        ``[B, F, W, K]``, log draft probability ``[B, F, W]``, q ``[B, F, W, K, V]`` (None: deterministic)."""
        s = self.sampler
        B, F, K, V = logits.shape
        logp = torch.log_softmax(s.warp(logits), dim=-1)  # [B, F, K, V]
        q = None
        if not s.greedy and not s.keyed and K == 1 and not self.dynamic:  # i.i.d. siblings from q
            q = s.probs(logits)  # [B, F, K, V]
            tokens = torch.stack([s.sample(q) for _ in range(self.width)], dim=2)  # [B, F, W, K]
            q = q[:, :, None].expand(B, F, self.width, K, V)
        else:
            scores = logp
            if s.keyed and not s.greedy:  # the keyed choice (coupled with the target's noise) first
                first = s.keyed_choice(logits, (self.base + depth)[:, None].expand(B, F))  # [B, F, K]
                scores = scores.scatter(-1, first[..., None], float("inf"))
            tokens = scores.topk(min(self.width, V), dim=-1).indices.transpose(2, 3)  # [B, F, W, K]
        logq = logp.gather(-1, tokens.transpose(2, 3)).sum(2)  # [B, F, W] (a frame: the product over K)
        return tokens, logq, q

    def _tree(self, logits: Tensor, k: int) -> Draft:
        """Grow the tree depth by depth from ``logits [B, 1, K, V]`` (after ``last``), then keep N nodes."""
        N, self.fed = self.tree, None
        # 1. The children of ``last``; a level's candidates are kept as [B, C_d, ...] per depth.
        tokens, logq, q = self._children(logits, 0)
        toks, scores = [tokens.flatten(1, 2)], [logq.flatten(1)]  # [B, C, K], [B, C] log cumulative q
        ups = [torch.full_like(scores[0], -1, dtype=torch.long)]  # [B, C] parent candidate (-1: last)
        probs = [None if q is None else q.flatten(1, 2)]
        W, fronts, total = tokens.shape[2], [], 0
        for depth in range(1, min(k, N) + 1):
            # 2. Static trees stop at N candidates (a prefix of each level: exact for i.i.d. siblings too).
            if not self.dynamic:
                room = N - total
                toks[-1], scores[-1], ups[-1] = toks[-1][:, :room], scores[-1][:, :room], ups[-1][:, :room]
                probs[-1] = None if probs[-1] is None else probs[-1][:, :room]
            offset, total = total, total + scores[-1].shape[1]
            if depth == min(k, N) or (not self.dynamic and total >= N):
                break
            # 3. Expand: static, the first nodes of the level that the room needs; dynamic, the best ``width``.
            here = self._expand(scores[-1], W, N - total)  # [B, f] indices into the newest level
            fronts.append(offset + here)
            out = self._feed(torch.cat(toks, 1), torch.cat(ups, 1), fronts)[:, -here.shape[1]:]  # [B, f, K, V]
            tokens, logq, q = self._children(out, depth)
            toks.append(tokens.flatten(1, 2))
            scores.append((scores[-1].gather(1, here)[..., None] + logq).flatten(1))
            ups.append((offset + here)[..., None].expand(-1, -1, tokens.shape[2]).flatten(1))
            probs.append(None if q is None else q.flatten(1, 2))
        probs_t = None if probs[0] is None else torch.cat(probs, 1)
        return self._select(torch.cat(toks, 1), torch.cat(scores, 1), torch.cat(ups, 1), probs_t)

    def _expand(self, level: Tensor, W: int, room: int) -> Tensor:
        """Which nodes of a level ``[B, C]`` (their log cumulative q) get children: ``[B, f]``."""
        B, C = level.shape
        if self.dynamic:
            return level.topk(min(self.width, C), dim=1).indices.sort(dim=1).values
        return torch.arange(min(C, math.ceil(room / W)), device=level.device).expand(B, -1)

    def _feed(self, tokens: Tensor, ups: Tensor, fronts: list[Tensor]) -> Tensor:
        """One tree forward of the draft model over every expanded node so far (depth by depth), after the
        committed prefix; returns their logits ``[B, F, K, V]``. The previous level's forward is forgotten."""
        fed = torch.cat(fronts, dim=1)  # [B, F] candidate indices
        B, F = fed.shape
        frames = tokens.gather(1, fed[..., None].expand(B, F, tokens.shape[-1]))  # [B, F, K]
        where = torch.full_like(ups, -1).scatter(1, fed, torch.arange(F, device=fed.device).expand(B, F))
        up = ups.gather(1, fed)  # [B, F] parent candidates, all expanded themselves
        parents = torch.where(up < 0, -1, where.gather(1, up.clamp(min=0)))  # [B, F] over the fed frames
        if self.fed is not None:
            self.model.keep(self.base)
        self.fed = (frames, parents)
        return self._fit(self.model.forward(frames, parents)).float()

    def _select(self, tokens: Tensor, scores: Tensor, ups: Tensor, probs: Tensor | None) -> Draft:
        """The draft: every candidate (static), or the N of highest cumulative q, parents first (dynamic)."""
        B, C, K = tokens.shape
        N = self.tree
        if not self.dynamic:  # one topology for the batch
            return Draft(tokens=tokens, probs=probs, parents=ups[0])
        N = min(N, C)
        best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :N]  # ancestors first among ties
        keep = best.sort(dim=1).values  # [B, N] candidates in creation order: parents before children
        node = torch.full_like(ups, -1).scatter(1, keep, torch.arange(N, device=keep.device).expand(B, N))
        up = ups.gather(1, keep)
        parents = torch.where(up < 0, -1, node.gather(1, up.clamp(min=0)))  # [B, N]
        return Draft(tokens=tokens.gather(1, keep[..., None].expand(B, N, K)), parents=parents)

    # -- after a step ------------------------------------------------------------------------------
    def observe(self, step: Step, target_logits: Tensor) -> None:
        if self.adaptive and step.n_drafted and self.k_now is not None:
            live = step.row_counts() > 0  # [B] rows that have ended draft nothing worth counting
            all_in = bool((step.n_accepted[live] >= step.n_drafted).all())
            self.k_now = min(self.k_max, self.k_now + 2) if all_in else max(1, self.k_now - 1)
        # Keep the committed frames the draft model has already fed; the rest wait in the backlog.
        n = step.frames.shape[1]
        limit = step.row_counts() if self.per_row_commits else torch.full_like(step.row_counts(), n)  # [B]
        path = self._committed(step.frames, limit)  # [B, m] (-1 past a row's own count)
        m = (path >= 0).sum(dim=1)  # [B]
        if self.fed is not None and self.fed[0].shape[1]:
            tree = self.fed[1] is not None and path.shape[1] > 0
            self.model.keep(self.base + m, path if tree else None)
        self.fed = None
        self._wait(step.frames, m, limit)

    def _wait(self, frames: Tensor, start: Tensor, end: Tensor) -> None:
        """Add the committed ``frames [B, n, K]`` at ``start <= j < end`` (per row) to the backlog, each row's
        frames first, in order."""
        j = torch.arange(frames.shape[1], device=frames.device)[None]
        new = (j >= start[:, None]) & (j < end[:, None])  # [B, n]
        if self.backlog is not None:
            old = torch.arange(self.backlog.shape[1], device=frames.device)[None] < self.waiting[:, None]
            frames, new = torch.cat([self.backlog, frames], dim=1), torch.cat([old, new], dim=1)
        order = torch.sort((~new).long(), dim=1, stable=True).indices  # a row's frames first, in order
        self.waiting = new.sum(dim=1)
        L = max(1, int(self.waiting.max()))
        self.backlog = frames.gather(1, order[..., None].expand_as(frames))[:, :L]

    def _committed(self, frames: Tensor, limit: Tensor) -> Tensor:
        """The fed frames that match the committed ``frames [B, n, K]`` from the start, by content, at most
        ``limit - 1`` per row (``last`` is fed again); in lockstep the batch minimum: ``[B, m]`` indices into the
        fed frames, -1 past a row's own count."""
        B = frames.shape[0]
        if self.fed is None or self.fed[0].shape[1] == 0:
            return frames.new_zeros(B, 0)
        fed, parents = self.fed
        F = fed.shape[1]
        parents = topology.per_row(parents, B, F, fed.device)
        rows = []
        for fed_b, up_b, got_b, end in zip(fed.tolist(), parents.tolist(), frames.tolist(), limit.tolist()):
            child = {(p, tuple(f)): j for j, (p, f) in enumerate(zip(up_b, fed_b))}
            node, path = -1, []
            for frame in got_b[: max(end - 1, 0)]:
                if frame[0] < 0:  # the row has ended: what its cache holds no longer matters
                    path.append(min(len(path), F - 1))
                    continue
                node = child.get((node, tuple(frame)))
                if node is None:
                    break
                path.append(node)
            rows.append(path)
        if not self.per_row_commits:
            rows = [p[: min(len(q) for q in rows)] for p in rows]
        m = max(len(p) for p in rows)
        return torch.tensor([p + [-1] * (m - len(p)) for p in rows], dtype=torch.long,
                            device=frames.device).reshape(B, m)
