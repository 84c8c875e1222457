"""The trainable parts of the self-drafters; the target's own output head and embedding stay frozen outside.

* ``MedusaHeads`` (Cai et al. 2024, "Medusa"): M residual SiLU blocks ``h + W2 silu(W1 h)`` on the
  target's last hidden state; block i, read through the target's output head, guesses the token i + 1
  ahead of the newest committed frame (i + 2 ahead of the frame whose state it reads).
* ``EagleLayer`` (Li et al. 2024, "EAGLE"): ``fc([feature_t, embed(token_{t+1})])`` then one Llama decoder
  layer (causal attention over its window) predicts ``feature_{t+1}``, the target's next hidden state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class MedusaHeads(nn.Module):
    """``num_heads`` residual blocks over hidden size ``hidden``; ``forward(h [..., H]) -> [..., M, H]``.

    ``zero_init`` (the Medusa default) starts every block as the identity, so each head begins by guessing
    the target's own next token; False keeps PyTorch's random init (tests)."""

    def __init__(self, hidden: int, num_heads: int, zero_init: bool = True):
        super().__init__()
        self.hidden, self.num_heads = hidden, num_heads
        self.w1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))
        self.w2 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))
        if zero_init:
            for w in self.w2:
                nn.init.zeros_(w.weight)
                nn.init.zeros_(w.bias)

    def config(self) -> dict:
        return {"kind": "medusa", "hidden_size": self.hidden, "num_heads": self.num_heads}

    def forward(self, h: Tensor) -> Tensor:
        return torch.stack([h + w2(nn.functional.silu(w1(h))) for w1, w2 in zip(self.w1, self.w2)], dim=-2)


class EagleLayer(nn.Module):
    """One decoder layer over ``fc([feature, embedding])``: ``forward(feats [B, T, H], emb [B, T, E])`` ->
    the predicted next features ``[B, T, H]`` (position t sees positions <= t of its window)."""

    def __init__(self, hidden: int, embed_dim: int, num_attention_heads: int, intermediate_size: int,
                 window: int = 128):
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        super().__init__()
        self.sizes = {"hidden_size": hidden, "embed_dim": embed_dim, "num_attention_heads": num_attention_heads,
                      "intermediate_size": intermediate_size, "window": window}
        self.window = window
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate_size, vocab_size=2, bos_token_id=0,
                          eos_token_id=0, pad_token_id=None, num_attention_heads=num_attention_heads,
                          num_key_value_heads=num_attention_heads, max_position_embeddings=window)
        cfg._attn_implementation = "sdpa"
        self.fc = nn.Linear(hidden + embed_dim, hidden)
        self.layer = LlamaDecoderLayer(cfg, layer_idx=0)
        self.rotary = LlamaRotaryEmbedding(cfg)

    def config(self) -> dict:
        return {"kind": "eagle", **self.sizes}

    def forward(self, feats: Tensor, emb: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """``mask [B, T, T]`` (True: may attend; default causal) and ``positions [B, T]`` (default 0..T-1)
        let a token tree share one pass: a node sees the context and its ancestors, at context + depth."""
        x = self.fc(torch.cat([feats, emb.to(feats.dtype)], dim=-1))  # [B, T, H]
        T = x.shape[1]
        if positions is None:
            positions = torch.arange(T, device=x.device)[None]  # [1, T]
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None]
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
        return self.layer(x, attention_mask=bias[:, None], position_ids=positions,
                          position_embeddings=self.rotary(x, positions))


def eagle_for(hidden: int, embed_dim: int, heads: int | None = None, window: int = 128) -> EagleLayer:
    """An ``EagleLayer`` sized after the target: its attention heads (else ``hidden // 64``), MLP 2.5 x hidden."""
    heads = heads if heads and hidden % heads == 0 else max(1, hidden // 64)
    return EagleLayer(hidden, embed_dim, heads, (5 * hidden // 2 + 7) // 8 * 8, window)
