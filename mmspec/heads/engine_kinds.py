"""Self-drafter kinds laid out exactly as the serving engines compute them, so an export is a renaming.

* ``Eagle1Layer`` (kind ``eagle1``): vLLM's and SGLang's EAGLE-1 draft model (``llama_eagle.py``):
  ``x = fc([embedding, feature])`` (embedding first, no bias), then one Llama decoder layer whose
  attention input is NOT normalized (layer 0 has no ``input_layernorm``), and no final norm: the output
  ``h + mlp(post_attention_layernorm(h))`` goes straight to the target's output head. mmspec's ``eagle``
  kind normalizes the attention input and has an fc bias, which the engines cannot represent.
* ``Medusa1Heads`` (kind ``medusa1``): vLLM's Medusa (``medusa.py``): head i is one residual block
  ``h + silu(W_i h + b_i)`` read through the target's output head (exported as ``lm_heads.i``). mmspec's
  ``medusa`` kind, ``h + W2 silu(W1 h)``, is not of that form.

Both train through ``mmspec heads train --kind eagle1|medusa1`` and draft through ``EagleDrafter`` /
``MedusaDrafter`` unchanged (they only call ``project``/``qkv``/``attend`` and ``forward``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..drafters.int8 import Int8Copies
from .modules import EagleLayer, blocks


class Eagle1Layer(EagleLayer):
    """``EagleLayer`` in the engines' EAGLE-1 layout: no input norm, ``fc`` without bias over
    ``[embedding, feature]``; ``embed_dim`` must equal ``hidden`` (the engines' fc is ``[H, 2H]``)."""

    def __init__(self, hidden: int, embed_dim: int, num_attention_heads: int, intermediate_size: int,
                 window: int = 128):
        if embed_dim != hidden:
            raise ValueError(f"an eagle1 layer needs the target's embedding size ({embed_dim}) to equal its hidden "
                             f"size ({hidden}), as the engines' fc [H, 2H] does; use --kind eagle")
        super().__init__(hidden, embed_dim, num_attention_heads, intermediate_size, window)
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.layer.input_layernorm = nn.Identity()  # the engines skip layer 0's input norm

    def config(self) -> dict:
        """The sizes, plus the norm epsilon and RoPE base the export writes into the engines' config."""
        llama = self.layer.self_attn.config
        rope = getattr(llama, "rope_parameters", None) or {"rope_theta": llama.rope_theta}
        return {**super().config(), "kind": "eagle1", "rms_norm_eps": llama.rms_norm_eps,
                "rope_theta": float(rope["rope_theta"])}

    def project(self, feats: Tensor, emb: Tensor) -> Tensor:
        """``fc([embedding, feature])``: the layer's input ``[B, T, H]``."""
        return self.fc(torch.cat([emb.to(feats.dtype), feats], dim=-1))


class Medusa1Heads(nn.Module):
    """``num_heads`` one-layer residual blocks ``h + silu(W h + b)`` (vLLM's Medusa with ``medusa_fc_bias``);
    ``forward(h [..., H]) -> [..., M, H]``. ``zero_init`` starts every block as the identity. ``int8`` holds the CPU
    int8 copies the drafters on these heads read (``mmspec.drafters.int8.Int8Copies``)."""

    def __init__(self, hidden: int, num_heads: int, zero_init: bool = True):
        super().__init__()
        self.hidden, self.num_heads = hidden, num_heads
        self.blocks = blocks(hidden, num_heads, zero_init)
        self.int8 = Int8Copies()

    def config(self) -> dict:
        return {"kind": "medusa1", "hidden_size": self.hidden, "num_heads": self.num_heads}

    def forward(self, h: Tensor) -> Tensor:
        return torch.stack([h + nn.functional.silu(block(h)) for block in self.blocks], dim=-2)
