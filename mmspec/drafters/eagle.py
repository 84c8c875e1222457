"""An EAGLE-style drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty"; trees: "EAGLE-2", Li et al. 2024): one decoder layer over ``fc([feature_t, embed(frame_{t+1})])``
predicts the target's next hidden feature, read through the target's frozen output head, and drafts on
its own predicted features.

Its context is a window of (feature, next frame) pairs that starts at the end of the prompt: the prefill
gives only its last frame's state, and every step adds the committed frames' states from the verify
forward. The layer is trained on windows of the same length (``mmspec.heads.train``).

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


class EagleDrafter:
    """``EagleDrafter(layer, tree=None, width=4)``: ``layer`` a ``mmspec.heads.EagleLayer``; a chain of up to
    k frames, or (``tree`` N) a dynamic tree of at most N nodes and depth k, ``width`` children per node."""

    wants_hidden = True

    def __init__(self, layer, tree: int | None = None, width: int = 4):
        self.layer = layer.eval()
        self.tree = None if tree is None else count(tree, "tree (node budget)")
        self.width = count(width, "width")

    def start(self, target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        from .heads import attach

        attach(self, target, sampler, self.layer.sizes["hidden_size"])
        self.embed = target.input_embeddings()
        self.K = target.num_codebooks
        self.feats = None  # [B, S, H] committed features, each followed by the frame in ``frames``
        self.frames = None  # [B, S, K]

    @torch.inference_mode()
    def propose(self, last: Tensor, k: int) -> Draft:
        room = self.layer.window - self.feats.shape[1]  # positions left in the layer's window
        k = min(k, room if self.tree is None else room // self.width + 1)
        if k < 1:
            return Draft(tokens=last[:, :0])
        dtype = next(self.layer.parameters()).dtype
        feats, emb = self.feats.to(dtype), self.embed(self.frames).to(dtype)  # [B, S, H], [B, S, E]
        if self.tree is None:
            return self._chain(feats, emb, k)
        return self._tree(feats, emb, k)

    def _chain(self, feats: Tensor, emb: Tensor, k: int) -> Draft:
        from .heads import choose, read

        drafted, probs = [], []
        # Each round: predict the feature after the newest pair, read a frame, append the pair.
        for i in range(k):
            nxt = self.layer(feats, emb)[:, -1:]  # [B, 1, H]
            frame, q = choose(self.sampler, read(self.head, nxt, self.K), self.target.pos + 1 + i)  # [B, 1, K]
            drafted.append(frame)
            probs.append(q)
            feats, emb = torch.cat([feats, nxt], 1), torch.cat([emb, self.embed(frame).to(emb.dtype)], 1)
        return Draft(tokens=torch.cat(drafted, 1), probs=None if probs[0] is None else torch.cat(probs, 1))

    def _tree(self, feats: Tensor, emb: Tensor, k: int) -> Draft:
        from .heads import read

        B, S, _ = feats.shape
        W, dev = self.width, feats.device
        rows = torch.arange(B, device=dev)[:, None]
        # pool (every candidate node): frame [B, P, K], parent pool index, cumulative log-prob, depth
        pool_frames, pool_parent, pool_score, pool_depth = [], [], [], []
        # expanded nodes (the layer's sequence after the context): pool index, input feature, embedding
        seq_pool, seq_feat, seq_emb, seq_parent = [], [], [], []  # each [B, W] / [B, W, H] / [B, W, E] / [B, W]
        out = self.layer(feats, emb)[:, -1:]  # [B, 1, H]: the context's prediction for depth 1
        base = torch.zeros(B, 1, device=dev)  # [B, F] frontier scores
        parent_pool = torch.full((B, 1), -1, dtype=torch.long, device=dev)  # [B, F]
        for depth in range(1, k + 1):
            logp = read(self.head, out, self.K).log_softmax(-1)  # [B, F, K, V]
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
            # the next frontier: the best W children; their inputs are (their parent's output, their frame)
            best = score.topk(min(W, score.shape[1]), dim=-1).indices  # [B, F']
            chosen = pool_frames[-1][rows, best]  # [B, F', K]
            parent_out = out[rows, best // Wc]  # [B, F', H]
            seq_parent.append(self._seq_parent(pool_parent[-1][rows, best], seq_pool))
            seq_pool.append(start + best)
            seq_feat.append(parent_out)
            seq_emb.append(self.embed(chosen).to(emb.dtype))
            out = self._run(feats, emb, seq_feat, seq_emb, seq_parent)  # [B, F', H]
            base, parent_pool = score[rows, best], start + best
        return self._select(torch.cat(pool_frames, 1), torch.cat(pool_parent, 1), torch.cat(pool_score, 1),
                            torch.cat(pool_depth, 1))

    @staticmethod
    def _seq_parent(parent_pool: Tensor, seq_pool: list[Tensor]) -> Tensor:
        """The sequence index (among expanded nodes) of each new frontier node's parent, -1 for the root."""
        if not seq_pool:
            return torch.full_like(parent_pool, -1)
        seen = torch.cat(seq_pool, 1)  # [B, n] pool index of every expanded node
        match = seen[:, None, :] == parent_pool[:, :, None]  # [B, F, n]
        return torch.where(match.any(-1), match.long().argmax(-1), -1)

    def _run(self, feats, emb, seq_feat, seq_emb, seq_parent) -> Tensor:
        """The layer over the context and every expanded node (each node sees the context and its ancestors);
        returns the outputs of the newest expanded nodes ``[B, F, H]``."""
        B, S, _ = feats.shape
        parents = torch.cat(seq_parent, 1)  # [B, n]
        n, F_ = parents.shape[1], seq_parent[-1].shape[1]
        see = trees.ancestors(parents)  # [B, n, n]
        mask = torch.ones(B, S + n, S + n, dtype=torch.bool, device=feats.device).tril()
        mask[:, S:, S:] = see
        positions = torch.cat([torch.arange(S, device=feats.device).expand(B, S), S + trees.depths(parents) - 1], 1)
        x = self.layer(torch.cat([feats, *seq_feat], 1), torch.cat([emb, *seq_emb], 1), mask=mask, positions=positions)
        return x[:, -F_:]

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

    def observe(self, step: Step, target_logits: Tensor) -> None:
        from .heads import committed_states

        feats = committed_states(self.target, step)  # [B, n, H]
        frames = step.frames.clamp(min=0)  # [B, n, K]: the frame each state predicted
        if self.feats is not None:
            feats, frames = torch.cat([self.feats, feats], 1), torch.cat([self.frames, frames], 1)
        keep = self.layer.window // 2  # room for the draft; the layer's positions stay inside its window
        self.feats, self.frames = feats[:, -keep:], frames[:, -keep:]
