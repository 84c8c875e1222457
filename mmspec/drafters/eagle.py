"""An EAGLE-style drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty"): one decoder layer over ``fc([feature_t, embed(token_{t+1})])`` predicts the target's next
hidden feature, read through the target's frozen output head, and drafts autoregressively on its own
predicted features for k frames (a chain).

Its context is a window of (feature, next token) pairs that starts at the end of the prompt: the prefill
gives only its last frame's state, and every step adds the committed frames' states from the verify
forward. The layer is trained on windows of the same length (``mmspec.heads.train``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..sampling import Sampler
from ..types import Draft, Step


class EagleDrafter:
    """``EagleDrafter(layer)``: ``layer`` a ``mmspec.heads.EagleLayer``; drafts a chain of up to k frames."""

    wants_hidden = True

    def __init__(self, layer):
        self.layer = layer.eval()

    def start(self, target, sampler: Sampler, prompt: Any, max_new_tokens: int) -> None:
        from .heads import attach

        attach(self, target, sampler, self.layer.sizes["hidden_size"])
        self.embed = target.input_embeddings()
        self.K = target.num_codebooks
        self.feats = None  # [B, S, H] committed features, each followed by the token in ``tokens``
        self.tokens = None  # [B, S]

    @torch.inference_mode()
    def propose(self, last: Tensor, k: int) -> Draft:
        from .heads import choose, read

        k = min(k, self.layer.window - self.feats.shape[1])
        dtype = next(self.layer.parameters()).dtype
        feats, tokens = self.feats.to(dtype), self.tokens  # [B, S, H], [B, S]
        drafted, probs = [], []
        # Each round: predict the feature after the newest pair, read a token, append the pair.
        for i in range(k):
            nxt = self.layer(feats, self.embed(tokens))[:, -1:]  # [B, 1, H]
            tok, q = choose(self.sampler, read(self.head, nxt, self.K), self.target.pos + 1 + i)  # [B, 1, K]
            drafted.append(tok)
            probs.append(q)
            feats, tokens = torch.cat([feats, nxt], 1), torch.cat([tokens, tok[..., 0]], 1)
        return Draft(tokens=torch.cat(drafted, 1), probs=None if probs[0] is None else torch.cat(probs, 1))

    def observe(self, step: Step, target_logits: Tensor) -> None:
        from .heads import committed_states

        feats = committed_states(self.target, step)  # [B, n, H]
        tokens = step.frames[..., 0].clamp(min=0)  # [B, n]: the frame each state predicted
        if self.feats is not None:
            feats, tokens = torch.cat([self.feats, feats], 1), torch.cat([self.tokens, tokens], 1)
        keep = self.layer.window // 2  # room for the draft; the layer's positions stay inside its window
        self.feats, self.tokens = feats[:, -keep:], tokens[:, -keep:]
