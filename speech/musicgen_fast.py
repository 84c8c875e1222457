"""MusicGen's decoder on the fast path (``mmspec.fast``): a static self-attention cache, cross-attention keys and values
computed once per generation, and prepacked products.

MusicGen's decoder is not a Llama: sinusoidal positions added to the summed codebook embeddings, LayerNorm before
self-attention, cross-attention over the text encoder's states and the GELU MLP, no biases, K output heads. This
module runs that stack from the model's own weights:

* q/k/v of self-attention are one product, the K heads one product (``mmspec.fast.PackedLinear``: the skinny kernel
  for up to ``SKINNY_ROWS`` rows, where a row's result does not depend on the rows beside it);
* self-attention writes the new frames' keys and values into a ``mmspec.fast.StaticKV`` (rolled back by its length;
  a tree's accepted path gathered in place) and, for up to ``ATTEND_FRAMES`` frames, attends with
  ``mmspec.skinny.attend`` (a frame's result is bit-identical whatever other frames run with it), so a verify over
  several frames gives each frame what a one-frame forward gives it;
* cross-attention reads the encoder's keys and values, computed at ``encode`` and padded with hidden slots to at least
  ``ATTEND_FRAMES`` (a hidden key adds exactly nothing), so the same kernel serves it.

Where the C kernels do not build (or the weights are not float32 on a CPU) attention runs on torch's kernel.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from mmspec import skinny
from mmspec.fast import ATTEND_FRAMES, PackedLinear, StaticKV, attention, full_mask


def why_not(model) -> str | None:
    """None if ``model`` (a ``MusicgenForConditionalGeneration``) runs on the fast path, else the reason."""
    decoder = getattr(getattr(getattr(model, "decoder", None), "model", None), "decoder", None)
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(decoder, "embed_positions"):
        return "not a MusicGen decoder (model.decoder.model.decoder with layers and sinusoidal positions)"
    devices = {p.device for p in model.decoder.parameters()}
    if len(devices) > 1 or any(d.type == "meta" for d in devices):
        return "its weights are spread over devices or offloaded (device_map)"
    layer = decoder.layers[0]
    for part in ("self_attn", "encoder_attn"):
        attn = getattr(layer, part, None)
        if attn is None or any(getattr(attn, n).bias is not None for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
            return f"its {part} is not MusicGen's (q/k/v/out products without bias)"
    return None


class FastMusicgen:
    """A ``MusicgenForConditionalGeneration``'s decoder over a ``StaticKV``: ``encode(states, mask)`` once per
    generation, then ``__call__(ids [R * K, T], positions [R, T], mask, cache)`` -> the final-norm state ``[R, T, H]``
    and the K heads' logits ``[R * K, T, V]`` (rows major, codebooks minor, as the model's own ``logits``)."""

    def __init__(self, model):
        reason = why_not(model)
        if reason is not None:
            raise ValueError(f"cannot build MusicGen's fast path: {reason}")
        started = time.perf_counter()
        decoder = model.decoder.model.decoder
        self.tables = decoder.embed_tokens  # K codebook tables
        self.positions = decoder.embed_positions
        self.K = len(self.tables)
        first = decoder.layers[0].self_attn
        self.heads, self.head_dim = int(first.num_heads), int(first.head_dim)
        self.scale = float(first.scaling)
        self.dtype, self.device = first.q_proj.weight.dtype, first.q_proj.weight.device
        self.layers = [_Layer(layer) for layer in decoder.layers]
        self.norm = decoder.layer_norm
        heads = model.decoder.lm_heads
        self.lm_heads = PackedLinear([h.weight for h in heads], [h.bias for h in heads])
        self.V = int(heads[0].weight.shape[0])
        self.project = getattr(model, "enc_to_dec_proj", None)  # text encoder -> decoder width, where they differ
        self.attends = skinny.library() is not None and self.dtype == torch.float32 and self.device.type == "cpu"
        self.cross: list[tuple[Tensor, Tensor]] = []  # per layer the encoder's keys and values [R, h, L', D]
        self.cross_mask: Tensor | None = None  # [R, 1, 1, L'] additive: hides the encoder's padding and the pad slots
        self.setup_s = time.perf_counter() - started  # packing the weights: the fast path's one-time cost

    def new_cache(self, rows: int, slots: int) -> StaticKV:
        return StaticKV(len(self.layers), rows, self.heads, max(1, slots), self.head_dim, self.dtype, self.device)

    @torch.inference_mode()
    def encode(self, states: Tensor, mask: Tensor) -> None:
        """The text encoder's ``states [R, L, E]`` with their attention ``mask [R, L]`` (1: a token; a guided batch's
        null half: all 0), as the model's forward prepares them (projected to the decoder's width where they differ,
        zeroed where masked): every layer's cross-attention keys and values, kept for the generation."""
        if self.project is not None and states.shape[-1] != self.layers[0].cross_k.in_features:
            states = self.project(states)
        states = (states * mask[..., None].to(states.dtype)).to(self.dtype)
        R, L = mask.shape
        slots = max(L, ATTEND_FRAMES) if self.attends else L
        seen = torch.zeros(R, slots, dtype=torch.bool, device=mask.device)
        seen[:, :L] = mask.bool()
        self.cross_mask = torch.zeros(R, 1, 1, slots, dtype=self.dtype, device=mask.device).masked_fill_(
            ~seen[:, None, None, :], torch.finfo(self.dtype).min)
        self.cross = []
        for layer in self.layers:
            k, v = (p(states).view(R, L, self.heads, self.head_dim).transpose(1, 2) for p in (layer.cross_k, layer.cross_v))
            if slots > L:  # hidden slots: a key the mask hides adds nothing, so any frame count fits the kernel
                k, v = (F.pad(t, (0, 0, 0, slots - L)) for t in (k, v))
            self.cross.append((k.contiguous(), v.contiguous()))

    @torch.inference_mode()
    def __call__(self, ids: Tensor, positions: Tensor, mask: Tensor | None, cache: StaticKV) -> tuple[Tensor, Tensor]:
        R, T = positions.shape
        codes = ids.view(R, self.K, T)
        x = sum(table(codes[:, k]) for k, table in enumerate(self.tables))  # [R, T, H]
        if int(positions.max()) >= self.positions.weights.shape[0]:
            self.positions.make_weights(int(positions.max()) + 1, self.positions.embedding_dim)
        x = (x + self.positions.weights[positions].to(x.dtype)).to(self.dtype)
        few = self.attends and T <= ATTEND_FRAMES
        if not few:
            mask = full_mask(mask, T, cache.length + T, self.dtype, x.device)
        cross_mask = self.cross_mask.expand(R, 1, T, self.cross_mask.shape[-1])  # the same encoder slots for every frame
        cache.reserve(T)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, mask, cross_mask, cache, self, few)
        cache.length += T
        hidden = self.norm(x)  # [R, T, H]
        logits = self.lm_heads(hidden).view(R, T, self.K, self.V).permute(0, 2, 1, 3).reshape(R * self.K, T, self.V)
        return hidden, logits


class _Layer:
    """One MusicGen decoder layer's weights: self-attention (q/k/v fused), cross-attention, the GELU MLP."""

    def __init__(self, layer):
        a, c = layer.self_attn, layer.encoder_attn
        self.qkv = PackedLinear([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        self.out = PackedLinear([a.out_proj.weight])
        self.cross_q, self.cross_out = PackedLinear([c.q_proj.weight]), PackedLinear([c.out_proj.weight])
        self.cross_k, self.cross_v = PackedLinear([c.k_proj.weight]), PackedLinear([c.v_proj.weight])
        self.fc1, self.fc2 = PackedLinear([layer.fc1.weight]), PackedLinear([layer.fc2.weight])
        self.norms = (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm)
        self.act = layer.activation_fn

    def __call__(self, x: Tensor, i: int, mask: Tensor | None, cross_mask: Tensor, cache: StaticKV, net: FastMusicgen,
                 few: bool) -> Tensor:
        R, T, H = x.shape
        h, D = net.heads, net.head_dim
        # 1. self-attention over the cached frames and the new ones (written into the static cache)
        q, k, v = self.qkv(self.norms[0](x)).view(R, T, 3 * h, D).transpose(1, 2).split(h, dim=1)
        keys, values = cache.write(i, k, v)  # [R, h, S + T, D]
        x = self.out(attention(q, keys, values, mask, net.scale, few), residual=x)
        # 2. cross-attention over the text encoder's states
        q = self.cross_q(self.norms[1](x)).view(R, T, h, D).transpose(1, 2)
        keys, values = net.cross[i]
        x = self.cross_out(attention(q, keys, values, cross_mask, net.scale, few), residual=x)
        # 3. the MLP
        return self.fc2(self.act(self.fc1(self.norms[2](x))), residual=x)

