"""The int8 reads of the self-drafters on a CPU (``MedusaDrafter``, ``EagleDrafter``): a drafter only guesses
and the target verifies with its own full-precision weights, so these change the guesses, never the output.

* ``Int8Head``: a linear map with int8 weights, one scale per row, on bfloat16 activations (a CPU's small
  products are bound by the bytes of their weights; this reads a quarter of them).
* ``int8_copy``: a copy of a module (the EAGLE layer) whose linear maps are ``Int8Head`` maps.
* ``Int8EagleLayer``: the EAGLE layer's parts on the skinny kernel's int8 products (``mmspec.skinny``), with the
  layer's elementwise work inside their calls, and a drafter's whole step as one call (``step``, ``eagle.c``);
  ``eagle_int8`` picks it where that kernel builds.
* ``DraftVocab``: the target's output head read on a subset of its vocabulary (EAGLE-3's reduced draft
  vocabulary).
* ``Int8Copies``: where the int8 copies live between runs, made once per source weights.
* ``reading_head``: the head a self-drafter reads the target's output head through (the set-up).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..protocols import OutputHead


def linear_parts(module: torch.nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """``(weight [R, H], bias)`` of a module that is one linear map an int8 copy may replace: an ``nn.Linear``
    (a drafter's own layer), or a target's ``OutputHead`` that is one linear map without a bias (a sliced
    head's bias: kept exact and simple, so such a head is read as it is); None for anything else."""
    if isinstance(module, torch.nn.Linear):
        return module.weight, module.bias
    if isinstance(module, OutputHead):
        parts = module.as_linear()
        if parts is not None and parts[1] is None:
            return parts
    return None


class Int8Head(torch.nn.Module):
    """A CPU copy of a linear map (an output head, or a drafter's own layer) with int8 weights, one scale per
    row, applied to bfloat16 activations by torch's kernel, or to float32 ones by the skinny kernel where it builds
    (``mmspec.skinny``: a 1.2-3x cheaper call for a drafter's few rows, BENCHMARKS.md "Session 10"). ``of`` returns
    the module itself where the kernel is missing or the module is not one linear map (``linear_parts``)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        if weight.shape[1] % 16:  # torch's CPU kernel crashes (a segfault, not an error) on other widths
            raise ValueError(f"the int8 kernel needs an input size divisible by 16, got {weight.shape[1]}")
        self.q, self.scales = quantize(weight)  # [V, H] int8, [V] bfloat16
        self.bias = None if bias is None else bias.detach().float()
        self.anchor = torch.nn.Parameter(torch.zeros(0, dtype=torch.float32), requires_grad=False)  # dtype probe
        self.skinny = _skinny_int8(self.q, self.scales, self.bias)

    @classmethod
    def of(cls, module: torch.nn.Module) -> torch.nn.Module:
        """An int8 copy of ``module``, or ``module`` itself (not one linear map, or no kernel here)."""
        parts = linear_parts(module)
        if parts is None:
            return module
        weight, bias = parts
        try:
            fast = cls(weight, bias)
            fast(torch.zeros(1, weight.shape[1]))  # the kernel exists on this build
        except (RuntimeError, AttributeError, ValueError):
            return module
        return fast

    def forward(self, x: Tensor) -> Tensor:
        if self.skinny is not None:
            return self.skinny(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.q, self.scales).float().reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``weight [R, H]`` as int8 with one scale per row (the largest magnitude maps to 127): ``(q [R, H], scales
    [R] bfloat16)``."""
    w = weight.detach().float()
    scales = (w.abs().amax(1) / 127).clamp(min=1e-12)  # [R]
    return (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous(), scales.to(torch.bfloat16)


def _skinny_int8(q: Tensor, scales: Tensor, bias: Tensor | None):
    """The skinny kernel's copy of int8 weights (None where it does not build)."""
    from .. import skinny

    if q.device.type != "cpu" or skinny.library() is None:
        return None
    return skinny.SkinnyWeight.int8(q, scales.float(), bias)


def int8_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers are ``Int8Head`` maps (for drafting on a CPU)."""
    out = copy.deepcopy(module)
    for name, child in list(out.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Linear):
                setattr(child, attr, Int8Head.of(sub))
    return out


def eagle_int8(layer: torch.nn.Module):
    """What an EAGLE drafter runs ``layer`` (an ``EagleLayer`` or ``Eagle1Layer``) on, on a CPU: an
    ``Int8EagleLayer`` where the skinny kernel builds, else ``int8_copy(layer)`` (also for a layer with a map whose
    input width is not a multiple of 16, which ``int8_copy`` keeps in float32 as ``Int8Head`` requires)."""
    from .. import skinny
    from ..heads.engine_kinds import Eagle1Layer
    from ..heads.modules import EagleLayer

    widths = [m.in_features for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    if skinny.library() is None or type(layer) not in (EagleLayer, Eagle1Layer) or any(w % 16 for w in widths):
        return int8_copy(layer)
    return Int8EagleLayer(layer)


class Int8EagleLayer:
    """An EAGLE layer's three parts (``project``, ``qkv``, ``attend``, as ``EagleLayer`` has them) on int8 copies of
    its weights run by the skinny kernel (``mmspec.skinny.SkinnyWeight.int8``): q/k/v and gate/up are one product
    each, and the input norms, the rotary angles, the SiLU gate and both residuals happen inside the products'
    calls. A drafted frame is then a handful of calls instead of some 30 torch operations (BENCHMARKS.md "Session
    10"). The weights are quantized as ``Int8Head`` does (one scale per row); the activations stay float32."""

    def __init__(self, layer: torch.nn.Module):
        from ..heads.engine_kinds import Eagle1Layer

        decoder = layer.layer
        attn, mlp = decoder.self_attn, decoder.mlp
        self.rotary_of = layer._angles
        self.embed_first = isinstance(layer, Eagle1Layer)  # its fc reads [embedding, feature]
        self.heads, self.head_dim, self.scale = attn.config.num_attention_heads, attn.head_dim, attn.scaling
        self.fc = _int8_product([layer.fc])
        self.qkv_product = _int8_product([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = _int8_product([attn.o_proj])
        self.gate_up = _int8_product([mlp.gate_proj, mlp.up_proj])
        self.down = _int8_product([mlp.down_proj])
        self.norms = [None if isinstance(n, torch.nn.Identity) else (n.weight.detach().float(), n.variance_epsilon)
                      for n in (decoder.input_layernorm, decoder.post_attention_layernorm)]
        self._step, self._offsets = None, None  # the one-call step (made at its first use), the embedding's offsets
        self._tables = (torch.zeros(0, self.head_dim), torch.zeros(0, self.head_dim))  # rotary cos, sin [P, D]

    def project(self, feats: Tensor, emb: Tensor) -> Tensor:
        """``fc`` of the pair: ``[B, T, H]``."""
        parts = [emb.to(feats.dtype), feats] if self.embed_first else [feats, emb.to(feats.dtype)]
        x = torch.cat(parts, dim=-1)
        return self.fc(x.reshape(-1, x.shape[-1])).view(*x.shape[:2], -1)

    def qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys and the values of ``x [B, T, H]`` at ``positions [B or 1, T]``: each
        ``[B, heads, T, head_dim]``."""
        B, T, H = x.shape
        D = self.head_dim
        cos, sin = self.rotary_of(positions, x)  # [B or 1, 1, T, D]
        cos, sin = (c[:, 0].expand(B, T, D).reshape(B * T, D) for c in (cos, sin))
        qkv = self.qkv_product(x.reshape(B * T, H), norm=self.norms[0], rope=(cos, sin, 2 * self.heads))
        return qkv.view(B, T, 3 * self.heads, D).transpose(1, 2).split(self.heads, dim=1)

    def attend(self, x: Tensor, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """The outputs ``[B, T, H]``: attention over ``keys``/``values`` (``mask [B, T, S]``, True: may attend; None:
        all), the residual, the SiLU-gated MLP and its residual, as ``EagleLayer.attend``."""
        B, T, H = x.shape
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None if mask is None else mask[:, None],
                                             scale=self.scale)
        h = self.o(out.transpose(1, 2).reshape(B * T, -1), residual=x.reshape(B * T, H))
        return self.down(self.gate_up(h, norm=self.norms[1]), gated=True, residual=h).view(B, T, H)

    def step(self, feats: Tensor, frames: Tensor, embed: torch.nn.Module, positions: Tensor, keys: Tensor,
             values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """New pairs ``(feats [B, T, H], frames [B, T, K])`` (``embed``: the target's frame embedding) at ``positions
        [B or 1, T]`` after the cached ``keys``/``values [B, heads, S, head_dim]``, as one kernel call (a drafter's inner
        loop; ``mmspec/csrc/eagle.c``): their outputs ``[B, T, H]`` and the keys and values with theirs appended.
        ``mask [B, T, S + T]`` (True: may attend) or None: pair t sees the S cached pairs and the new pairs up to
        itself."""
        table = self._lookup(embed)
        lookup = {"emb": embed(frames).float()} if table is None else {"table": table[0], "frames": frames,
                                                                        "offsets": table[1]}
        if mask is not None:  # True/False -> 0 / the lowest float (an additive mask, as the kernel reads it)
            mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return self._on_tables(lambda tables: self._kernel()(feats, positions, tables, keys, values, mask, **lookup),
                               positions, feats)

    def chain(self, head: torch.nn.Module, n: int, feat: Tensor, first: Tensor, keys: Tensor, values: Tensor,
              valid: Tensor | None, embed: torch.nn.Module, K: int, V: int, confidence: float = 0.0) -> Tensor | None:
        """A greedy chain of ``n`` frames in one kernel call (``mmspec/csrc/eagle.c``): each round the argmax of every
        codebook read through ``head`` from the newest feature (``feat [B, H]`` first), then the layer's step on that
        pair at position ``first [B] + round`` after the cached ``keys``/``values [B, heads, S, D]`` (``valid [B, S]``:
        the slots a row holds, None: all); from the second round on it ends before a frame whose top probability is
        below ``confidence`` in every row (``EagleDrafter``'s rule). Returns the frames ``[B, m <= n, K]``, or None where
        the kernel cannot read ``head`` (not an int8 copy) or ``embed`` (not a float32 frame table): then the drafter
        runs its own loop."""
        sub, rows = (head.sub, head.rows) if isinstance(head, DraftVocab) else (head, None)
        table = self._lookup(embed)
        if not isinstance(sub, Int8Head) or sub.skinny is None or table is None:
            return None
        return self._on_tables(lambda tables: self._kernel().chain(sub.skinny, n, feat, first, tables, keys, values,
                                                                   valid, table[0], table[1], K, V, rows, confidence),
                               first[:, None] + n, feat)

    def _kernel(self):
        from .. import skinny

        if self._step is None:
            self._step = skinny.EagleStep((self.fc, self.qkv_product, self.o, self.gate_up, self.down), self.norms,
                                          self.heads, self.head_dim, self.scale, self.embed_first)
        return self._step

    def _lookup(self, embed: torch.nn.Module) -> tuple[Tensor, Tensor] | None:
        """The frame table and codebook offsets the kernel sums a pair's embedding from, or None (embedded in Python)."""
        from ..hf import FrameEmbedding

        weight = embed.table.weight if isinstance(embed, FrameEmbedding) else None
        if weight is None or weight.dtype != torch.float32 or not weight.is_contiguous() or weight.shape[1] != self._kernel().E:
            return None
        if self._offsets is None or self._offsets.shape[0] != len(embed.offsets):
            self._offsets = torch.tensor(embed.offsets, dtype=torch.long)
        return weight.detach(), self._offsets

    def _on_tables(self, run: Callable, positions: Tensor, x: Tensor):
        """``run(tables)`` on the rotary tables (cos, sin); where it returns None (a position past them) the tables grow
        to cover ``positions`` (the layer's own ``_angles``) and it runs again."""
        done = run(self._tables)
        if done is None:
            self.rotary_of(positions, x)
            self._tables = tuple(t.contiguous() for t in self.rotary_of.__self__._table)
            done = run(self._tables)
        if done is None:  # pragma: no cover
            raise AssertionError("the rotary table did not grow")
        return done

    def __getstate__(self) -> dict:  # a copy rebuilds the kernel call's pointers from its own tensors
        return {**self.__dict__, "_step": None}

    def __call__(self, feats: Tensor, emb: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """A whole window at once, as ``EagleLayer.forward``: predicted next features ``[B, T, H]``."""
        x = self.project(feats, emb)
        T = x.shape[1]
        positions = torch.arange(T, device=x.device)[None] if positions is None else positions
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None] if mask is None else mask
        q, k, v = self.qkv(x, positions)
        return self.attend(x, q, k, v, mask.expand(x.shape[0], T, T))


def _int8_product(linears: Sequence[torch.nn.Linear]):
    """One int8 skinny product for the ``linears`` side by side (their outputs concatenated)."""
    from .. import skinny

    q, scales = quantize(torch.cat([m.weight.detach() for m in linears]))
    biases = [m.bias for m in linears]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b.detach().float() if b is not None else m.weight.new_zeros(m.weight.shape[0]) for m, b in zip(linears, biases)])
    return skinny.SkinnyWeight.int8(q, scales.float(), bias)


class DraftVocab(torch.nn.Module):
    """The target's output head read on a subset of its vocabulary (EAGLE-3's reduced draft vocabulary):
    logits ``[..., V]`` with -inf outside ``rows``. The drafter can only guess those tokens (the most
    frequent ones of its training data), at a fraction of the cost of the full head on a CPU; the target's
    verification is untouched, so output stays exact and only acceptance can drop. ``int8``: read the rows
    of a linear head with int8 weights (``Int8Head``)."""

    def __init__(self, head: torch.nn.Module, rows: Tensor, vocab_size: int, int8: bool = False):
        super().__init__()
        self.rows, self.V = rows, vocab_size
        parts = linear_parts(head)
        if parts is not None and parts[1] is None:  # the head's rows: a smaller linear map
            weight = parts[0]
            sub = torch.nn.Linear(weight.shape[1], len(rows), bias=False).to(weight)
            sub.weight.data = weight.detach()[rows].contiguous()  # [Vd, H]
            self.sub = Int8Head.of(sub) if int8 else sub
        else:  # any other head (an MLP, a biased map): run it whole and keep the rows
            self.sub = _Rows(head, rows)

    def forward(self, x: Tensor) -> Tensor:
        small = self.sub(x.float())  # [..., Vd]
        full = small.new_full((*small.shape[:-1], self.V), float("-inf"))
        return full.index_copy_(-1, self.rows, small)


class _Rows(torch.nn.Module):
    """``head(x)[..., rows]``: a draft vocabulary of a head that is not one linear map."""

    def __init__(self, head: torch.nn.Module, rows: Tensor):
        super().__init__()
        self.head, self.rows = head, rows

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x).index_select(-1, self.rows)


class Int8Copies:
    """The int8 copies self-drafters read on a CPU, owned by the heads they belong to (``MedusaHeads.int8``,
    ``EagleLayer.int8``), so every run with the same heads reuses them. One slot per name: a copy is made
    once per source and again only when the source's weights changed (another tensor, or an in-place update,
    which bumps its version). A slot holds its sources, so their memory cannot be reused by other weights
    while it compares against them. A deep copy of the owner starts with no copies."""

    def __init__(self):
        self._slots: dict[str, tuple[tuple, tuple[Tensor, ...], object]] = {}

    def get(self, name: str, sources: Sequence[Tensor], make: Callable[[], object]):
        """The copy in slot ``name`` made from ``sources`` (``make()`` when there is none yet or they changed)."""
        stamp = tuple((t.data_ptr(), tuple(t.shape), t.stride(), t._version) for t in sources)
        slot = self._slots.get(name)
        if slot is None or slot[0] != stamp:
            slot = self._slots[name] = (stamp, tuple(sources), make())
        return slot[2]

    def __deepcopy__(self, memo) -> "Int8Copies":
        return Int8Copies()


def reading_head(head: OutputHead, vocab: Tensor | None, vocab_size: int, cpu: bool,
                 copies: Int8Copies) -> torch.nn.Module:
    """What a self-drafter reads the target's output ``head`` through: on a reduced draft vocabulary
    (``vocab`` ids; made each run) or the whole head; on a CPU with int8 weights where the head is one
    linear map (the whole head's copy kept in ``copies``), else the head itself."""
    if vocab is not None:
        return DraftVocab(head, vocab, vocab_size, int8=cpu)
    parts = linear_parts(head)
    if not cpu or parts is None:
        return head
    fast = copies.get("head", parts[:1], lambda: _int8_only(head))
    return head if fast is None else fast  # None: no int8 kernel here, read the head itself


def _int8_only(head: torch.nn.Module) -> Int8Head | None:
    """The int8 copy of ``head``, or None (never ``head`` itself, which a cache must not hold on to)."""
    fast = Int8Head.of(head)
    return fast if isinstance(fast, Int8Head) else None
