"""The fast path: a static key/value cache and a lean forward over prepacked weights, for Llama-family decoders.

Why (measured, ``benchmarks/forward_profile.py``; BENCHMARKS.md "Fast path"): on a CPU a one-frame forward of the
Hugging Face eager model spends most of its time in matrix products whose weights stream from memory, and the
default float32 product kernel gets slower, not faster per row, from one row to several; the dynamic cache then
concatenates every layer's keys and values on every step. Here:

* **Prepacked products** (``PackedLinear``): on a CPU each weight is reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``) and applied with ``_linear_pointwise``; q/k/v and gate/up are one
  product each. A verify over 2-8 frames then costs about what one frame costs (the weights are read once).
  Elsewhere (CUDA, or a dtype/kernel the CPU build lacks) the plain ``F.linear`` on the fused weights.
* **Skinny products** (``mmspec.skinny``): where its C kernel builds (float32, x86-64 with AVX-512), products of up
  to ``SKINNY_ROWS`` rows (every decode and verify forward) run on it instead: the weights in panels of 16 outputs,
  read from memory once per call whatever the row count; 1.25-1.7x faster than oneDNN's for 1-12 rows on the
  development CPU (BENCHMARKS.md, "Session 9"), 1.5-1.8x faster again for 13-32 rows since the single pass ("Session
  12"). oneDNN keeps prefills. Its call also does the layer's elementwise work around each product (RMSNorm of the
  input, the SiLU gate, the residual, rotary angles on q and k): 0.7-0.8 ms less per forward of the text zoo target
  than as torch operations (BENCHMARKS.md, "Session 10"). ``PackedLinear`` takes the same options and runs them as
  torch operations on the other paths.
* **The whole stack in one call** (``mmspec.skinny.Decoder``, ``csrc/decoder.c``): where every product runs on the
  skinny kernel and attention on its few-frame kernel, a decode or verify forward (up to 32 frames and 128 rows) runs
  every layer back to back in C, the same kernel calls with the same arguments, so its hidden states are
  bit-identical to the layer-by-layer path's. Run from Python, a layer's five kernel calls and the views, cache
  writes and checks between them cost as much as its products: a one-frame forward of the text zoo target took
  3.6-4.0 ms layer by layer and 1.8 ms as one call on an Intel Xeon (BENCHMARKS.md, "Session 13").
* **A static cache** (``StaticKV``): keys and values preallocated ``[R, Hkv, S, D]`` per layer, written in place at
  the cache's length; rolling back moves the length (nothing is copied: rejected entries are overwritten later);
  a tree's accepted path is gathered to the front of the tail in place.
* **A lean forward** (``FastDecoder``): rotary tables computed once by the model's own rotary module,
  scaled-dot-product attention with one additive mask per forward. Greedy output equals the eager path's except
  where float rounding of different kernels flips a near tie (README "Exactness"; measured on the bench prompts).

Supported backbones: Llama, Mistral (no sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms): anything whose
decoder layers have that structure. ``why_not(backbone)`` names what stops another model; adapters then run eager.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from . import skinny

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
PACK_ROWS = 4  # rows the packed layout is tuned for; measured as fast as a one-row layout for 1..8 rows
MIN_ROWS = 4  # fewer rows run padded to this many: oneDNN's 1-3-row kernel was slower (5.2 vs 3.9 ms per forward)
ATTEND_FRAMES = 32  # forwards of up to this many frames attend on mmspec.skinny.attend (decode, verify), more on torch's
SKINNY_ROWS = 128  # up to this many rows the skinny kernel runs (mmspec.skinny; benchmarks/skinny_probe.py: faster than
# oneDNN up to 64 rows, on par at 96-128), so a row rounds alike in every decode and verify; more (prefills): oneDNN


def why_not(backbone: torch.nn.Module) -> str | None:
    """None if ``backbone`` (a ``LlamaModel``-like module: ``layers``, ``norm``, ``rotary_emb``) runs on the fast
    path; else the reason, for the message of the eager fallback."""
    config = getattr(backbone, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"the fast path supports {', '.join(SUPPORTED)} decoders, not {kind!r}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", kind == "mistral"):
        if int(config.sliding_window) < int(getattr(config, "max_position_embeddings", 0) or 0):
            return "a sliding attention window is not on the fast path"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"the fast path's MLP is SiLU-gated, this model's activation is {config.hidden_act!r}"
    devices = {p.device for p in backbone.parameters()}
    if len(devices) > 1 or any(d.type == "meta" for d in devices):
        return "its weights are spread over devices or offloaded (device_map)"
    for name in ("layers", "norm", "rotary_emb"):
        if not hasattr(backbone, name):
            return f"{type(backbone).__name__} has no {name!r} (not a Llama-family decoder)"
    layer = backbone.layers[0]
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    needs = [(attn, ("q_proj", "k_proj", "v_proj", "o_proj")), (mlp, ("gate_proj", "up_proj", "down_proj"))]
    if any(part is None or not all(isinstance(getattr(part, n, None), torch.nn.Linear) for n in names)
           for part, names in needs):
        return f"{type(layer).__name__} is not a Llama-family decoder layer (q/k/v/o and gate/up/down products)"
    return None


class PackedLinear:
    """``y = x W^T + b`` with ``W`` prepacked once (CPU, float32/bfloat16) or as is (elsewhere).

    ``weights``: the ``[out_i, in]`` matrices to apply as ONE product (concatenated along out, e.g. q, k, v);
    ``biases``: theirs or None. The packed copy is owned here; the model's own parameters are not changed."""

    def __init__(self, weights: list[Tensor], biases: list[Tensor | None] | None = None):
        weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
        self.out_features, self.in_features = weight.shape
        bias = None
        if biases is not None and any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(w.shape[0])
                              for w, b in zip(weights, biases)])
        self.bias = bias
        self.packed = _pack(weight)
        self.weight = weight if self.packed is None else None
        self.skinny = None  # the skinny kernel's copy, for up to SKINNY_ROWS rows (float32 on a CPU that has it)
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and skinny.library() is not None:
            self.skinny = skinny.SkinnyWeight(weight, bias)

    def __call__(self, x: Tensor, norm: tuple[Tensor, float] | None = None, gated: bool = False,
                 residual: Tensor | None = None, rope: tuple[Tensor, Tensor, int] | None = None
                 ) -> Tensor:  # [..., in] (gated: [..., 2 in]) -> [..., out]
        """``norm=(weight, eps)``: RMSNorm each row first; ``gated``: x is [gate | up], multiply ``silu(gate) * up``;
        ``residual [..., out]``: added to the result; or ``rope=(cos, sin [..., D], heads)``: the first ``heads``
        groups of D outputs turn by those rotary angles. A decoder layer's elementwise work around its products,
        which the skinny kernel does inside its call."""
        if rope is not None and residual is not None:
            raise ValueError("PackedLinear takes a residual or rotary angles, not both")
        flat = x.reshape(-1, x.shape[-1])
        M, shape = flat.shape[0], (*x.shape[:-1], self.out_features)
        if rope is not None:
            rope = (rope[0].reshape(M, -1), rope[1].reshape(M, -1), rope[2])
        if self.skinny is not None and M <= SKINNY_ROWS:
            res = None if residual is None else residual.reshape(M, self.out_features)
            return self.skinny(flat, norm, gated, res, rope).view(shape)
        if norm is not None:
            flat = F.rms_norm(flat, (flat.shape[-1],), norm[0], norm[1])
        if gated:
            gate, up = flat.split(self.in_features, dim=-1)
            flat = F.silu(gate) * up
        if self.packed is None:
            y = F.linear(flat, self.weight, self.bias)
        else:
            if M < MIN_ROWS:  # zero rows: the products are bound by reading the weights, so they cost nothing
                flat = F.pad(flat, (0, 0, 0, MIN_ROWS - M))
            y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")[:M]
        if rope is not None:
            cos, sin, turned = rope
            heads = y.view(M, -1, cos.shape[-1])  # [M, groups, D]
            heads[:, :turned] = rotate(heads[:, :turned], cos[:, None], sin[:, None])
        y = y.reshape(shape)
        return y if residual is None else residual + y


def _pack(weight: Tensor) -> Tensor | None:
    """oneDNN's blocked copy of ``weight [out, in]`` on a CPU, or None where that path is not available."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS)
        probe = torch.zeros(1, weight.shape[1], dtype=weight.dtype)
        torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return None
    return packed


class StaticKV:
    """Keys and values of every layer, preallocated: ``keys[l] [R, Hkv, S, D]`` (``values`` alike).

    ``length``: slots in use, the same for every row (rows differ by their left padding and by the holes a row
    that committed fewer frames leaves, which the adapter's mask hides; positions are per row). ``get_seq_length`` / ``crop(-n)`` mirror a ``DynamicCache``, so ``hf.KVCache`` rolls both back the
    same way; here rolling back only moves ``length``."""

    def __init__(self, layers: int, rows: int, kv_heads: int, slots: int, head_dim: int, dtype, device):
        shape = (layers, rows, kv_heads, slots, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def slots(self) -> int:
        return self.keys.shape[3]

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, n: int) -> None:
        """``crop(-n)``: forget the last n positions (negative count, as ``DynamicCache.crop`` takes it)."""
        if n >= 0:
            raise ValueError(f"StaticKV.crop takes a negative count of positions to remove, got {n}")
        self.length = max(0, self.length + n)

    def reserve(self, T: int) -> None:
        """Room for ``T`` more positions: grows the buffers (a copy, rare: the adapter sizes them for the run)."""
        need = self.length + T
        if need <= self.slots:
            return
        grow = max(need, 2 * self.slots) - self.slots
        pad = (0, 0, 0, grow)
        self.keys, self.values = F.pad(self.keys, pad), F.pad(self.values, pad)

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v [R, Hkv, T, D]`` at ``length`` (the forward's new positions); return the layer's keys and
        values up to and including them ``[R, Hkv, length + T, D]``. ``FastDecoder`` moves ``length`` after the
        forward's last layer."""
        T = k.shape[2]
        self.keys[layer, :, :, self.length: self.length + T] = k
        self.values[layer, :, :, self.length: self.length + T] = v
        end = self.length + T
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def row(self, r: int, length: int) -> "StaticKV":
        """Row ``r`` as a one-row cache sharing this one's memory, its ``length`` set to ``length``: a forward over it
        writes that row's slots from ``length`` on (a per-row prefill that skips the row's left padding)."""
        view = object.__new__(StaticKV)
        view.keys, view.values, view.length = self.keys[:, r: r + 1], self.values[:, r: r + 1], length
        return view

    @torch.inference_mode()
    def select_rows(self, rows: Tensor) -> None:
        """Keep the cache rows at ``rows [R']`` (in that order): a batch that dropped rows that have ended."""
        index = rows.to(self.keys.device)
        self.keys, self.values = self.keys[:, index], self.values[:, index]

    @torch.inference_mode()
    def keep_tail(self, T: int, index: Tensor) -> None:
        """Of the last ``T`` positions, those at ``index [R, m]`` (per row, in order) move to the front of the tail
        and the rest are dropped (a tree's accepted path)."""
        start = self.length - T
        m = index.shape[1]
        for buf in (self.keys, self.values):  # [L, R, Hkv, S, D]
            tail = buf[:, :, :, start: self.length]
            gather = index.to(buf.device)[None, :, None, :, None].expand(buf.shape[0], -1, buf.shape[2], -1, buf.shape[4])
            buf[:, :, :, start: start + m] = tail.gather(3, gather)
        self.length = start + m


class FastDecoder:
    """A Llama-family decoder stack (``backbone``: ``LlamaModel``-like) run over a ``StaticKV``.

    ``embeds [R, T, E]`` at ``positions [R, T]`` with an additive ``mask [R, 1, T, S + T]``, or ``[R, 1, T, T]`` over
    the new frames only (every cached position visible: a tree over a cache without padding or holes), or None (the
    causal tail: frame t sees every cached position and the new frames up to itself, a chain without padding or
    holes) -> the final-norm hidden state ``[R, T, H]``; the cache's ``length`` grows by T."""

    def __init__(self, backbone: torch.nn.Module):
        reason = why_not(backbone)
        if reason is not None:
            raise ValueError(f"cannot build the fast path: {reason}")
        started = time.perf_counter()
        config = backbone.config
        self.layers = [_Layer(layer, config) for layer in backbone.layers]
        self.norm = (backbone.norm.weight.detach(), _eps(backbone.norm))
        first = backbone.layers[0].self_attn
        self.head_dim = self.layers[0].head_dim
        self.kv_heads = self.layers[0].kv_heads
        self.dtype, self.device = first.q_proj.weight.dtype, first.q_proj.weight.device
        self.rotary = backbone.rotary_emb
        attends = skinny.library() is not None and self.dtype == torch.float32 and self.device.type == "cpu"
        for layer in self.layers:  # few-frame attention on mmspec.skinny.attend where its kernel builds
            layer.attends = attends and self.head_dim <= 256
        self.whole = None  # the whole stack as one C call (mmspec.skinny.Decoder) where every part runs on the kernels
        if (self.layers[0].attends and self.head_dim % 2 == 0
                and all(p.skinny is not None and layer.qk_norms is None for layer in self.layers for p in layer.products)):
            self.whole = skinny.Decoder([(*(p.skinny for p in layer.products), layer.norms, layer.scale)
                                         for layer in self.layers], self.layers[0].heads, self.kv_heads, self.head_dim,
                                        self.norm)
        self.max_positions = int(getattr(config, "max_position_embeddings", 4096) or 4096)
        self._rope(self.max_positions)
        self.setup_s = time.perf_counter() - started  # packing the weights: the fast path's one-time cost

    def _rope(self, positions: int) -> None:
        """cos/sin tables ``[P, D]`` from the model's own rotary module (any rope scaling it implements)."""
        probe = torch.zeros(1, 1, self.head_dim, dtype=self.dtype, device=self.device)
        index = torch.arange(positions, device=self.device)[None]
        cos, sin = self.rotary(probe, index)
        self.cos, self.sin = cos[0], sin[0]

    def new_cache(self, rows: int, slots: int) -> StaticKV:
        return StaticKV(len(self.layers), rows, self.kv_heads, max(1, slots), self.head_dim, self.dtype, self.device)

    @torch.inference_mode()
    def __call__(self, embeds: Tensor, positions: Tensor, mask: Tensor | None, cache: StaticKV) -> Tensor:
        T = embeds.shape[1]
        if int(positions.max()) >= self.cos.shape[0]:
            self._rope(2 * int(positions.max()) + 1)
        cos, sin = self.cos[positions], self.sin[positions]  # [R, T, D]
        R = embeds.shape[0]
        if self.whole is not None and T <= ATTEND_FRAMES and R * T <= SKINNY_ROWS:  # decode and verify forwards
            cache.reserve(T)
            hidden = self.whole(embeds.to(self.dtype), cos, sin, cache.keys, cache.values, cache.length, mask)
            cache.length += T
            return hidden  # [R, T, H]
        if not (self.layers[0].attends and T <= ATTEND_FRAMES):  # torch's attention needs every column written out
            mask = full_mask(mask, T, cache.length + T, self.dtype, embeds.device)
        cache.reserve(T)
        x = embeds.to(self.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i)
        cache.length += T
        weight, eps = self.norm
        if self.layers[0].attends:  # the C kernels build here: their norm is one call (torch's, several operations)
            return skinny.rms_norm(x, weight, eps)  # [R, T, H]
        return F.rms_norm(x, (x.shape[-1],), weight, eps)  # [R, T, H]


def full_mask(mask: Tensor | None, T: int, S: int, dtype: torch.dtype, device) -> Tensor | None:
    """The additive mask over all ``S`` slots that torch's attention needs, from the fast path's lean one: the causal
    tail (``mask`` None; ``[1, 1, T, S]``, None for one frame, which sees everything), the new frames' own mask ``[R, 1,
    T, T]`` with every cached column visible, or a full mask as it is."""
    if mask is None:
        if T == 1:
            return None
        visible = torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)
        return torch.zeros(T, S, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)[None, None]
    return F.pad(mask, (S - mask.shape[-1], 0)) if mask.shape[-1] < S else mask


def attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, scale: float, few: bool) -> Tensor:
    """``q [R, h, T, D]`` over ``keys``/``values [R, kv_heads, S, D]`` -> ``[R, T, h * D]``: ``few`` on mmspec.skinny's
    few-frame kernel (a frame's result whatever T is; ``mask`` lean, None: the causal tail), else on torch's (``mask``
    over every slot: ``full_mask``)."""
    if few:
        return skinny.attend(q, keys, values, mask, scale)
    R, h, T, D = q.shape
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=keys.shape[1] != h)
    return out.transpose(1, 2).reshape(R, T, h * D)


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class _Layer:
    """One decoder layer's weights, packed: attention (q/k/v fused) and the SiLU-gated MLP (gate/up fused)."""

    def __init__(self, layer: torch.nn.Module, config):
        attn, mlp = layer.self_attn, layer.mlp
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(attn, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = float(getattr(attn, "scaling", self.head_dim ** -0.5))
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv = PackedLinear([p.weight for p in projections], [p.bias for p in projections])
        self.o = PackedLinear([attn.o_proj.weight], [attn.o_proj.bias])
        self.gate_up = PackedLinear([mlp.gate_proj.weight, mlp.up_proj.weight], [mlp.gate_proj.bias, mlp.up_proj.bias])
        self.down = PackedLinear([mlp.down_proj.weight], [mlp.down_proj.bias])
        self.products = (self.qkv, self.o, self.gate_up, self.down)
        self.inter = mlp.gate_proj.weight.shape[0]
        self.attends = False  # set by FastDecoder
        self.norms = [(n.weight.detach(), _eps(n)) for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        self.qk_norms = None
        if hasattr(attn, "q_norm") and hasattr(attn, "k_norm"):  # Qwen3: RMSNorm per head on q and k
            self.qk_norms = [(n.weight.detach(), _eps(n)) for n in (attn.q_norm, attn.k_norm)]

    def __call__(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: StaticKV, i: int) -> Tensor:
        R, T, _ = x.shape
        # 1. attention: q/k/v in one product, rotary positions, this forward's keys/values into the cache
        D = self.head_dim
        if self.qk_norms is None:  # q and k turn by their positions inside the product's call
            qkv = self.qkv(x, norm=self.norms[0], rope=(cos, sin, self.heads + self.kv_heads))  # [R, T, (h + 2 kv) D]
            q, k, v = qkv.view(R, T, -1, D).transpose(1, 2).split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        else:  # Qwen3: RMSNorm per head on q and k (their own weights) before the rotation
            qkv = self.qkv(x, norm=self.norms[0])
            q, k, v = qkv.view(R, T, -1, D).transpose(1, 2).split([self.heads, self.kv_heads, self.kv_heads], dim=1)
            q = rotate(F.rms_norm(q, (D,), *self.qk_norms[0]), cos[:, None], sin[:, None])
            k = rotate(F.rms_norm(k, (D,), *self.qk_norms[1]), cos[:, None], sin[:, None])
        keys, values = cache.write(i, k, v)  # [R, kv_heads, S + T, D]
        out = attention(q, keys, values, mask, self.scale, self.attends and T <= ATTEND_FRAMES)  # [R, T, heads * D]
        x = self.o(out, residual=x)
        # 2. the SiLU-gated MLP: gate and up in one product, the gate applied as the down product reads them
        return self.down(self.gate_up(x, norm=self.norms[1]), gated=True, residual=x)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (the rotate-half convention, as Llama): ``x [..., h, T, D]``, ``cos/sin [..., 1, T, D]``
    (broadcast over the heads)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
