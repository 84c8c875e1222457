"""An EAGLE-style drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty"; trees: "EAGLE-2", Li et al. 2024): one decoder layer over ``fc([feature_t, embed(frame_{t+1})])``
predicts the target's next hidden feature, read through the target's frozen output head, and drafts on
its own predicted features.

Its context is a window of (feature, next frame) pairs that starts at the end of the prompt: the prefill
gives only its last frame's state, and every step adds the committed frames' states from the verify
forward. The layer is trained on windows of the same length (``mmspec.heads.train``). In one layer a
pair's key and value depend on that pair alone, so the drafter keeps them and each drafted frame costs one
position of attention, not a pass over the window.

* chain (``tree=None``): k rounds, each the layer's choice after the newest pair (a sample with its q
  under a sampling rule);
* dynamic tree (``tree=N``): EAGLE-2's expansion. Each depth runs the ``width`` frontier nodes with the
  highest cumulative draft log-probability through the layer (each node sees the context and its own
  ancestors), adds each one's top-``width`` children (codebook 0 ranks them; other codebooks take their
  top-1) to a pool, and the next frontier is the best ``width`` of those children. After k depths the
  draft is the ``N`` best pool nodes. A child never scores above its parent, so the best N are
  ancestor-closed. Siblings are deterministic (q = None) under every rule, which the tree rules accept
  exactly (SpecInfer's deterministic siblings).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import tree as trees
from ..sampling import Sampler
from ..types import Draft, Step, count
from . import selfdraft
from .int8 import Int8EagleLayer, eagle_int8


class EagleDrafter:
    """``EagleDrafter(layer, tree=None, width=4, vocab=None, depth=None, confidence=0)``: ``layer`` a
    ``mmspec.heads.EagleLayer``; a chain of up to k frames, or (``tree`` N) a dynamic tree of at most N
    nodes and depth k, ``width`` children per node; ``vocab`` (token ids) a reduced draft vocabulary
    (``mmspec.drafters.int8.DraftVocab``); ``depth`` caps how deep it drafts whatever k the loop asks for (useful in a
    mixture whose other part wants a longer window); a chain stops early where the layer's top probability
    falls below ``confidence`` in every row (the first frame is always drafted), so the target does not
    verify guesses that are likely wrong."""

    wants_hidden = True
    per_row_commits = True  # observe reads each row's own count (``Step.counts``)
    selects_rows = True  # select_rows keeps the rows still running (mmspec.compaction)

    def __init__(self, layer, tree: int | None = None, width: int = 4, vocab: Tensor | None = None,
                 depth: int | None = None, confidence: float = 0.0):
        self.layer, self.vocab = layer.eval(), vocab
        if not isinstance(confidence, (int, float)) or not 0 <= confidence < 1:
            raise ValueError(f"confidence must be a probability in [0, 1), got {confidence!r}")
        self.confidence = float(confidence)
        self.depth = None if depth is None else count(depth, "depth")
        self.tree = None if tree is None else count(tree, "tree (node budget)")
        self.width = count(width, "width")

    def start(self, target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        selfdraft.check(target, self.layer.sizes["hidden_size"], self.vocab)
        self.target, self.sampler = target, sampler
        self.head = selfdraft.head_of(target, self.vocab, self.layer.int8)
        self.net = self.layer
        if target.device.type == "cpu" and self.layer.fc.weight.dtype == torch.float32:
            # on a CPU the layer's products run on int8 weights (a guess only), quantized once per layer
            self.net = self.layer.int8.get("layer", list(self.layer.parameters()), lambda: eagle_int8(self.layer))
        self.embed = target.input_embeddings()
        self.K = target.num_codebooks
        self.keys = self.values = None  # [B, heads, S, d] of the committed (feature, frame) pairs in the window
        self.valid = None  # [B, S] which of those slots hold a row's pair (rows commit different counts)
        self.holes = False  # whether any slot is not valid (then every attention masks them)
        self.next_feat = None  # [B, 1, H]: the layer's output at the newest committed pair
        self.P = torch.zeros_like(target.pos)  # [B] the position of each row's next pair

    @torch.inference_mode()
    def propose(self, last: Tensor, k: int) -> Draft:
        k = k if self.depth is None else min(k, self.depth)
        room = self.layer.window - self.keys.shape[2]  # positions left in the layer's window
        k = min(k, room + 1 if self.tree is None else room // self.width + 1)
        if k < 1:
            return Draft(tokens=last[:, :0])
        if self.tree is None:
            return self._chain(k)
        return self._tree(k)

    def _step(self, feats: Tensor, frames: Tensor, positions: Tensor, keys: Tensor, values: Tensor,
              mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """New pairs ``(feats [B, T, H], frames [B, T, K])`` at ``positions [B or 1, T]`` after ``keys/values``:
        their outputs ``[B, T, H]`` and the keys and values with theirs appended; ``mask [B, T, S + T]``
        (None: each new pair sees everything before it and itself)."""
        dtype = self.keys.dtype
        if isinstance(self.net, Int8EagleLayer):  # the CPU's int8 layer: the whole step in a few kernel calls
            if self.holes:
                mask = self._holes(mask, feats.shape[1], keys.shape[2] + feats.shape[1], feats.shape[0])
            return self.net.step(feats.to(dtype), frames, self.embed, positions, keys, values, mask)
        x = self.net.project(feats.to(dtype), self.embed(frames).to(dtype))  # [B, T, H]
        q, k, v = self.net.qkv(x, positions)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        B, T, S = x.shape[0], x.shape[1], keys.shape[2]
        if mask is None and T > 1:  # one new pair sees everything: no mask at all
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T).expand(B, T, S)
        if self.holes:
            mask = self._holes(mask, T, S, B)
        return self.net.attend(x, q, keys, values, mask), keys, values

    def _holes(self, mask: Tensor | None, T: int, S: int, B: int) -> Tensor:
        """``mask [B, T, S]`` (None: each new pair sees everything before it and itself) with the committed
        context's slots that hold no pair of a row (``valid``) hidden from that row."""
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=self.valid.device).tril(S - T).expand(B, T, S)
        C = self.valid.shape[1]
        return torch.cat([mask[..., :C] & self.valid[:, None, :], mask[..., C:]], dim=-1)

    def _chain(self, k: int) -> Draft:
        if isinstance(self.net, Int8EagleLayer) and self.sampler.greedy:  # the whole chain in one kernel call
            frames = self.net.chain(self.head, k, self.next_feat[:, 0], self.P, self.keys, self.values,
                                    self.valid if self.holes else None, self.embed, self.K, self.target.vocab_size,
                                    self.confidence)
            if frames is not None:
                return Draft(tokens=frames)
        drafted, probs = [], []
        feat, keys, values = self.next_feat, self.keys, self.values
        # Each round: read a frame from the newest predicted feature, then predict the feature after it.
        for i in range(k):
            logits = selfdraft.read(self.head, feat, self.K)  # [B, 1, K, V]
            if i and self.confidence and bool((logits.softmax(-1).amax(-1).amin(-1) < self.confidence).all()):
                break  # every row is unsure of this frame: verifying it would likely cost more than it saves
            frame, q = selfdraft.choose(self.sampler, logits, self.target.pos + 1 + i)  # [B, 1, K]
            drafted.append(frame)
            probs.append(q)
            if i + 1 < k:
                positions = self.P[:, None] + i  # [B, 1]
                feat, keys, values = self._step(feat, frame, positions, keys, values, None)
        return Draft(tokens=torch.cat(drafted, 1), probs=None if probs[0] is None else torch.cat(probs, 1))

    def _tree(self, k: int) -> Draft:
        B, W, dev = self.next_feat.shape[0], self.width, self.next_feat.device
        rows = torch.arange(B, device=dev)[:, None]
        # pool (every candidate node): frame [B, P, K], parent pool index, cumulative log-prob, depth
        pool_frames, pool_parent, pool_score, pool_depth = [], [], [], []
        # expanded nodes (pairs after the context): pool index and parent among the expanded, per depth
        seq_pool, seq_parent = [], []
        keys, values = self.keys, self.values
        out = self.next_feat  # [B, F, H]: the outputs whose frames are read at this depth (depth 1: one)
        base = torch.zeros(B, 1, device=dev)  # [B, F] frontier scores
        parent_pool = torch.full((B, 1), -1, dtype=torch.long, device=dev)  # [B, F]
        for depth in range(1, k + 1):
            logp = selfdraft.read(self.head, out, self.K).log_softmax(-1)  # [B, F, K, V]
            top = logp[:, :, 0].topk(min(W, logp.shape[-1]), dim=-1)  # [B, F, W] codebook 0 ranks children
            F_, Wc = top.indices.shape[1:]
            frames = logp.argmax(-1)[:, :, None, :].expand(B, F_, Wc, self.K).clone()  # [B, F, W, K]
            frames[..., 0] = top.indices
            score = (base[..., None] + top.values).reshape(B, F_ * Wc)  # [B, F * W]
            start = sum(s.shape[1] for s in pool_score)
            pool_frames.append(frames.reshape(B, F_ * Wc, self.K))
            pool_parent.append(parent_pool[:, :, None].expand(B, F_, Wc).reshape(B, F_ * Wc))
            pool_score.append(score)
            pool_depth.append(torch.full((B, F_ * Wc), depth, device=dev))
            if depth == k:
                break
            # the next frontier: the best W children; their pairs are (their parent's output, their frame)
            best = score.topk(min(W, score.shape[1]), dim=-1).indices  # [B, F']
            seq_parent.append(self._seq_parent(pool_parent[-1][rows, best], seq_pool))
            seq_pool.append(start + best)
            mask = self._tree_mask(seq_parent, keys.shape[2] - sum(p.shape[1] for p in seq_parent[:-1]))
            positions = (self.P[:, None] + depth - 1).expand(B, best.shape[1])  # [B, F']
            out, keys, values = self._step(out[rows, best // Wc], pool_frames[-1][rows, best], positions, keys,
                                           values, mask)
            base, parent_pool = score[rows, best], start + best
        return self._select(torch.cat(pool_frames, 1), torch.cat(pool_parent, 1), torch.cat(pool_score, 1),
                            torch.cat(pool_depth, 1))

    @staticmethod
    def _tree_mask(seq_parent: list[Tensor], S: int) -> Tensor:
        """What the newest expanded nodes see ``[B, F, S + n]``: the ``S`` context pairs, their ancestors
        among the ``n`` expanded nodes, and themselves."""
        parents = torch.cat(seq_parent, 1)  # [B, n]
        F_ = seq_parent[-1].shape[1]
        see = trees.ancestors(parents)[:, -F_:]  # [B, F, n]
        return torch.cat([see.new_ones(see.shape[0], F_, S), see], 2)

    @staticmethod
    def _seq_parent(parent_pool: Tensor, seq_pool: list[Tensor]) -> Tensor:
        """The sequence index (among expanded nodes) of each new frontier node's parent, -1 for the root."""
        if not seq_pool:
            return torch.full_like(parent_pool, -1)
        seen = torch.cat(seq_pool, 1)  # [B, n] pool index of every expanded node
        match = seen[:, None, :] == parent_pool[:, :, None]  # [B, F, n]
        return torch.where(match.any(-1), match.long().argmax(-1), -1)

    def _select(self, frames: Tensor, parent: Tensor, score: Tensor, depth: Tensor) -> Draft:
        """The ``tree`` best pool nodes (ties: shallower first), in pool order (parents first), renumbered."""
        B, P, _ = frames.shape
        N = min(self.tree, P)
        key = score - depth * 1e-6  # a child never outranks its parent, even at probability 1
        keep = key.topk(N, dim=-1).indices.sort(-1).values  # [B, N] pool indices, parents before children
        rows = torch.arange(B, device=frames.device)[:, None]
        new_index = torch.full((B, P), -1, dtype=torch.long, device=frames.device)
        new_index[rows, keep] = torch.arange(N, device=frames.device).expand(B, N)
        up = parent[rows, keep]  # [B, N] pool parents
        parents = torch.where(up < 0, -1, new_index.gather(1, up.clamp(min=0)))
        return Draft(tokens=frames[rows, keep], parents=parents)

    @torch.inference_mode()  # the layer's weights are parameters: without it autograd recorded every pair (1.6x the time)
    def observe(self, step: Step, target_logits: Tensor) -> None:
        feats = selfdraft.committed_states(self.target, step)  # [B, n, H]
        frames = step.frames.clamp(min=0)  # [B, n, K]: the frame each state predicted
        counts = step.row_counts()  # [B] pairs each row adds (rows commit different counts)
        if self.keys is None:
            heads, d = self.layer.layer.self_attn.config.num_attention_heads, self.layer.layer.self_attn.head_dim
            self.keys = self.values = feats.new_zeros(feats.shape[0], heads, 0, d, dtype=self.layer.fc.weight.dtype)
            self.valid = torch.ones(feats.shape[0], 0, dtype=torch.bool, device=feats.device)
        n = feats.shape[1]
        positions = self.P[:, None] + torch.arange(n, device=feats.device)[None]  # [B, n]
        out, keys, values = self._step(feats, frames, positions, self.keys, self.values, None)
        if step.counts is None or bool((counts == n).all()):  # every row added n pairs (always at batch 1)
            self.next_feat = out[:, -1:]  # [B, 1, H]
            valid = None if not self.holes else torch.cat([self.valid, self.valid.new_ones(self.valid.shape[0], n)], 1)
        else:
            self.next_feat = out.gather(1, step.newest()[:, None, None].expand(-1, 1, out.shape[-1]))  # [B, 1, H]
            valid = torch.cat([self.valid, torch.arange(n, device=feats.device)[None] < counts[:, None]], dim=1)
        self._window(keys, values, valid)
        self.P = self.P + counts

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']``, in that order: their pairs (the window narrows to the kept rows' longest)."""
        self.next_feat, self.P = self.next_feat[index], self.P[index]
        self._window(self.keys[index], self.values[index], self.valid[index])

    def _window(self, keys: Tensor, values: Tensor, valid: Tensor | None) -> None:
        """Keep each row's newest pairs, right-aligned, at most half the trained window (room for the draft;
        attention spans stay inside it): a row's window is the one it has decoded alone. ``valid [B, S]``: which
        slots hold a pair of their row (None: all do)."""
        if valid is None:  # no holes: the newest slots, no sorting
            width = min(self.layer.window // 2, keys.shape[2])
            self.keys, self.values = keys[:, :, keys.shape[2] - width:], values[:, :, keys.shape[2] - width:]
            self.valid, self.holes = torch.ones(1, 1, dtype=torch.bool, device=keys.device).expand(keys.shape[0], width), False
            return
        if not bool(valid.all()):
            order = torch.sort(valid.long(), dim=1, stable=True).indices  # [B, S] a row's holes first
            keys = keys.gather(2, order[:, None, :, None].expand_as(keys))
            values = values.gather(2, order[:, None, :, None].expand_as(values))
            valid = valid.gather(1, order)
        width = min(self.layer.window // 2, int(valid.sum(dim=1).max()))
        S = keys.shape[2]
        self.keys, self.values, self.valid = keys[:, :, S - width:], values[:, :, S - width:], valid[:, S - width:]
        self.holes = not bool(self.valid.all())
