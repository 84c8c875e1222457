"""The trainable parts of the self-drafters; the target's own output head and embedding stay frozen outside.

* ``MedusaHeads`` (Cai et al. 2024, "Medusa"): M residual SiLU blocks ``h + W2 silu(W1 h)`` on the
  target's last hidden state; block i, read through the target's output head, guesses the token i + 1
  ahead of the newest committed frame (i + 2 ahead of the frame whose state it reads).
* ``EagleLayer`` (Li et al. 2024, "EAGLE"): ``fc([feature_t, embed(token_{t+1})])`` then one Llama decoder
  layer (causal attention over its window) predicts ``feature_{t+1}``, the target's next hidden state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..drafters.int8 import Int8Copies
from ..fast import rotate


def blocks(hidden: int, count: int, zero: bool) -> nn.ModuleList:
    """``count`` linear maps ``[H] -> [H]`` with biases, all zeros when ``zero`` (a residual block then starts as
    the identity), else PyTorch's random init."""
    made = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(count))
    for block in made if zero else ():
        nn.init.zeros_(block.weight)
        nn.init.zeros_(block.bias)
    return made


class MedusaHeads(nn.Module):
    """``num_heads`` residual blocks over hidden size ``hidden``; ``forward(h [..., H]) -> [..., M, H]``.

    ``zero_init`` (the Medusa default) starts every block as the identity, so each head begins by guessing
    the target's own next token; False keeps PyTorch's random init (tests). ``int8`` holds the CPU int8
    copies the drafters on these heads read (``mmspec.drafters.int8.Int8Copies``), shared by all of them."""

    def __init__(self, hidden: int, num_heads: int, zero_init: bool = True):
        super().__init__()
        self.hidden, self.num_heads = hidden, num_heads
        self.w1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))
        self.w2 = blocks(hidden, num_heads, zero_init)
        self.int8 = Int8Copies()

    def config(self) -> dict:
        return {"kind": "medusa", "hidden_size": self.hidden, "num_heads": self.num_heads}

    def forward(self, h: Tensor) -> Tensor:
        return torch.stack([h + w2(nn.functional.silu(w1(h))) for w1, w2 in zip(self.w1, self.w2)], dim=-2)


class EagleLayer(nn.Module):
    """One decoder layer over ``fc([feature, embedding])``: ``forward(feats [B, T, H], emb [B, T, E])`` ->
    the predicted next features ``[B, T, H]`` (position t sees positions <= t of its window). ``int8`` holds
    the CPU int8 copies the drafters on this layer read (``mmspec.drafters.int8.Int8Copies``)."""

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
        self.int8 = Int8Copies()

    def config(self) -> dict:
        return {"kind": "eagle", **self.sizes}

    # The layer in three parts, so a drafter can keep the keys and values of the pairs it has seen: in one
    # layer a pair's key and value depend on that pair only, never on the pairs around it.
    def project(self, feats: Tensor, emb: Tensor) -> Tensor:
        """``fc([feature, embedding])``: the layer's input ``[B, T, H]``."""
        return self.fc(torch.cat([feats, emb.to(feats.dtype)], dim=-1))

    # qkv/attend run the decoder layer's own weights (or its int8 copy's) without the Hugging Face module glue: a
    # drafted frame is a handful of tiny products, where per-call overhead (the rotary module recomputing its
    # angles, the norm and MLP wrappers) cost as much as the products (benchmarks/eagle_step.py).
    def qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys and the values of inputs ``x [B, T, H]`` at ``positions [B or 1, T]``:
        each ``[B, heads, T, head_dim]``."""
        attn = self.layer.self_attn
        h = rms_norm(self.layer.input_layernorm, x)
        shape = (*x.shape[:2], -1, attn.head_dim)
        q, k, v = (proj(h).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        cos, sin = self._angles(positions, x)  # [B or 1, 1, T, head_dim]
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def _angles(self, positions: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The rotary cos/sin at ``positions``, read from a table the layer's own rotary module filled once (grown
        on demand); the table is plain state of this instance, not a weight."""
        table = getattr(self, "_table", None)
        need = int(positions.max()) + 1
        if table is None or table[0].shape[0] < need or table[0].device != x.device or table[0].dtype != x.dtype:
            index = torch.arange(max(need, 2 * self.window), device=x.device)[None]
            cos, sin = self.rotary(x, index)  # [1, P, head_dim]
            table = self._table = (cos[0], sin[0])
        return table[0][positions][:, None], table[1][positions][:, None]

    def attend(self, x: Tensor, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """The outputs ``[B, T, H]`` of inputs ``x`` with queries ``q`` over ``keys``/``values`` ``[B, h, S, d]``,
        ``mask [B, T, S]`` (True: may attend; None: all): attention, residual, MLP, residual, as a Llama layer does."""
        attn = self.layer.self_attn
        mask = None if mask is None else mask[:, None]  # None: every query sees every key
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
        h = x + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
        mlp, m = self.layer.mlp, rms_norm(self.layer.post_attention_layernorm, h)
        return h + mlp.down_proj(F.silu(mlp.gate_proj(m)) * mlp.up_proj(m))  # Llama's SiLU-gated MLP

    def forward(self, feats: Tensor, emb: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """Predicted next features ``[B, T, H]`` of a whole window; ``mask [B, T, T]`` (True: may attend;
        default causal) and ``positions [B, T]`` (default 0..T-1) let a token tree share one pass."""
        x = self.project(feats, emb)  # [B, T, H]
        T = x.shape[1]
        if positions is None:
            positions = torch.arange(T, device=x.device)[None]  # [1, T]
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None]
        q, k, v = self.qkv(x, positions)
        return self.attend(x, q, k, v, mask.expand(x.shape[0], T, T))


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A Llama RMSNorm module applied through ``F.rms_norm`` (its weight and epsilon); ``nn.Identity`` passes."""
    if isinstance(norm, nn.Identity):
        return x
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def eagle_for(hidden: int, embed_dim: int, heads: int | None = None, window: int = 128,
              layer_class: type = EagleLayer) -> EagleLayer:
    """An ``EagleLayer`` (or ``layer_class``, e.g. ``Eagle1Layer``) sized after the target: its attention heads
    (else ``hidden // 64``), MLP 2.5 x hidden."""
    heads = heads if heads and hidden % heads == 0 else max(1, hidden // 64)
    return layer_class(hidden, embed_dim, heads, (5 * hidden // 2 + 7) // 8 * 8, window)
