"""What every Hugging Face adapter shares, so that each adapter keeps only its quirk.

* **Device and dtype**: one policy for every adapter (``resolve_device``, ``resolve_dtype``). No device
  given: CUDA if there is one, else the CPU. No dtype given: float32 on the CPU; on CUDA bfloat16 where
  the GPU supports it, else float16 (the same for every adapter).
* **The model kind**: ``check_model_type`` reads a folder's (or hub id's) ``config.json`` before anything
  is built, so a folder of the wrong kind is a clear ValueError, never a default-size random model.
* **The cache**: ``KVCache`` holds the model's ``DynamicCache`` with what must stay aligned with it (the
  attention mask over left padding, the frames fed); ``HFTarget.keep`` crops them together through the
  cache's public ``crop(-n)``. ``cache_arg`` names the forward argument that takes it.
* **Token trees**: ``KVCache.tree`` builds a tree's 4-D additive attention mask (padding and ancestors)
  and its positions (pos + depth - 1); the models take a 4-D mask as is. ``KVCache.keep_path`` gathers
  the accepted path's keys and values to the front per row (the per-layer ``keys`` / ``values`` of the
  ``DynamicCache``: the one place that reads them) and drops the rest.
* **Left-padded batches**: ``left_pad`` turns id rows into ``ids [B, L]`` and ``pads [B]``;
  ``padding_mask`` and ``position_ids`` follow, so positions count real tokens only.
* **Classifier-free guidance over a doubled batch**: conditional rows first, unconditional rows second,
  one cache, rolled back together; ``guide`` mixes ``uncond + s * (cond - uncond)``, optionally only
  inside an interval of the frames to generate (``check_guidance``, ``inside_interval``).
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from . import tree
from .fast import StaticKV

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- device and dtype ------------------------------------------------------------------------------

def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` if available, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or a
    ``torch.device``) where that device exists; anything else is a ValueError naming ``device``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "cpu, cuda or cuda:N (a GPU that exists), or None for cuda-if-available"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be {allowed}; got {device!r}") from err
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count():
        return dev
    raise ValueError(f"device must be {allowed}; got {device!r} (no such device on this machine)")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype | str:
    """The weights' dtype: ``None`` -> float32 on the CPU, bfloat16 on CUDA where supported (else float16);
    ``"float32"``, ``"float16"``, ``"bfloat16"`` or one of those ``torch.dtype``s; ``"auto"`` (returned as
    is: the dtype the checkpoint was saved in). Anything else is a ValueError naming ``dtype``."""
    if dtype is None:
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and (dtype in DTYPES or dtype == "auto"):
        return DTYPES.get(dtype, dtype)
    raise ValueError(f"dtype must be float32, float16, bfloat16, auto or None (the default), got {dtype!r}")


# -- the model kind --------------------------------------------------------------------------------

def check_hub(repo_id: str) -> None:
    """Fail fast, with a clear message, for a hub id that is neither in the local Hugging Face cache nor
    reachable: one short request instead of the download's retries (tens of seconds without a network)."""
    import huggingface_hub as hub

    if isinstance(hub.try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: from_pretrained finds it without the network
    offline = "" if not hub.constants.HF_HUB_OFFLINE else " (HF_HUB_OFFLINE is set)"
    hint = "pass a local folder, zoo:NAME, or a hub id that is in the local Hugging Face cache"
    if offline:
        raise ValueError(f"{repo_id!r} is not in the local Hugging Face cache{offline}; {hint}")
    try:
        hub.model_info(repo_id, timeout=10)
    except hub.errors.RepositoryNotFoundError:
        raise ValueError(f"no model {repo_id!r} on the Hugging Face Hub (or it is private); {hint}") from None
    except hub.errors.HfHubHTTPError:
        return  # the hub answered (e.g. a gated model): let from_pretrained report the details
    except Exception as err:  # no route, DNS failure, timeout: the network is not there
        raise ValueError(f"cannot reach the Hugging Face Hub to fetch {repo_id!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no answer'}); {hint}") from None


def read_config(name_or_path: str) -> dict:
    """The ``config.json`` of a local folder or hub id as a dict (nothing is built); ValueError if none."""
    from transformers import PretrainedConfig

    if not os.path.exists(str(name_or_path)):
        check_hub(str(name_or_path))
    try:
        config, _ = PretrainedConfig.get_config_dict(str(name_or_path))
    except (OSError, ValueError, EnvironmentError) as err:
        raise ValueError(f"could not read a model config (config.json) from {str(name_or_path)!r}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return config


def check_model_type(name_or_path: str, allowed: Sequence[str], what: str) -> dict:
    """Refuse a folder whose ``config.json`` names another ``model_type`` than ``allowed``; returns the config."""
    config = read_config(name_or_path)
    kind = config.get("model_type")
    if kind not in allowed:
        raise ValueError(f"{str(name_or_path)!r} holds a {kind!r} model, not {what} "
                         f"(config.json model_type must be {' or '.join(map(repr, allowed))})")
    return config


# -- the cache and rollback ------------------------------------------------------------------------

def cache_arg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` since transformers 5.2x, else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class KVCache:
    """A model's key/value cache and what must stay aligned with it, position for position.

    ``kv``: a ``DynamicCache`` (or, with ``kv=None``, the cache the model returns from its first forward:
    assign it to ``kv``); ``mask [R, S]``: the attention mask (1 = real, 0 = left padding), None when not
    needed; ``fed [R, S', K]``: the frames fed, for adapters that constrain by what came before.
    """

    def __init__(self, mask: Tensor | None = None, fed: Tensor | None = None, kv: Any = "new"):
        if isinstance(kv, str):
            from transformers import DynamicCache

            kv = DynamicCache()
        self.kv, self.mask, self.fed = kv, mask, fed

    @property
    def length(self) -> int:
        """Positions held (for an encoder-decoder cache: the decoder's self-attention positions)."""
        return 0 if self.kv is None else int(self.kv.get_seq_length())

    @property
    def rows(self) -> int:
        """Rows held (a guided batch: both halves), 0 before the first forward."""
        if isinstance(self.kv, StaticKV):
            return int(self.kv.keys.shape[1])
        layers = getattr(getattr(self.kv, "self_attention_cache", self.kv), "layers", None) or []
        keys = getattr(layers[0], "keys", None) if layers else None
        return 0 if keys is None else int(keys.shape[0])

    def grow(self, T: int, frames: Tensor | None = None) -> Tensor | None:
        """Before a forward of ``T`` new positions (call it before the model adds them to the cache): extend the
        mask with ones to cover them (a prefill's mask covers them already: its padding) and remember
        ``frames [R, T, K]``; returns the mask the forward takes."""
        if self.mask is not None and self.length + T > self.mask.shape[1]:
            new = self.length + T - self.mask.shape[1]
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], new)], dim=1)
        if frames is not None and self.fed is not None:
            self.fed = torch.cat([self.fed, frames], dim=1)
        return self.mask

    def rollback(self, now: Tensor, pos: Tensor) -> int:
        """Forget the positions after ``pos [B]`` (rows are at ``now [B]``); returns how many slots were removed.

        Rows may move back by different counts (each row commits its own accepted frames): the slots every row
        drops are removed (``crop(-n)`` removes n positions in every transformers version; a positive argument
        means "keep n" in 4.x and is refused in 5.x; it is never called with 0), and a row that drops more has
        its extra slots masked (``mask`` 0: a hole its later frames do not see; positions count each row's own
        frames, so a row's attention is exactly that of the row alone). Both guidance halves (rows b and B + b
        of a doubled cache) move together.
        """
        back = (now - pos).clamp(min=0)  # [B] (a row asked to keep a later position keeps what it holds)
        remove = int(back.min())
        if remove > 0:
            self.kv.crop(-remove)
            if self.mask is not None:
                self.mask = self.mask[:, : self.length]  # never longer than the cache: a stale hole would hide a new slot
            if self.fed is not None:
                self.fed = self.fed[:, :-remove]
        holes = back - remove  # [B] slots each row drops beyond the common count
        if bool((holes > 0).any()):
            self.hide_tail(holes)
        return remove

    def hide_tail(self, holes: Tensor) -> None:
        """Mask the last ``holes [B]`` slots of each row (and of its guidance twin): a row that committed fewer
        frames than another keeps its rejected slots as holes, never copied. Creates the mask (all ones) if none."""
        S = self.length
        rows = self.rows or holes.shape[0]
        if self.mask is None:
            self.mask = torch.ones(rows, S, dtype=torch.long, device=holes.device)
        elif self.mask.shape[1] < S:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], S - self.mask.shape[1])], dim=1)
        slot = torch.arange(self.mask.shape[1], device=self.mask.device)[None]  # [1, S]
        hide = slot >= S - rows_of(holes.to(self.mask.device)[:, None], self.mask.shape[0])  # [R, S]
        self.mask = self.mask.masked_fill(hide, 0)

    def tree(self, parents: Tensor, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Attention mask and positions for a token tree of ``T`` new frames over the cached positions.

        ``parents [T] or [B, T]`` over the forward's own frames (-1 = child of the cached prefix; rows of a
        doubled batch repeat it), ``pos [R]``: the position of a child of the cached prefix (the left-padding
        offset already applied). Returns an additive ``mask [R, 1, T, S + T]`` in ``dtype`` (0 where frame t
        may attend: every cached position that is not padding, its ancestors and itself; the dtype's min
        elsewhere) and ``position_ids [R, T]`` = ``pos + depth - 1``. Call it before ``grow``.
        """
        return self.inputs(parents.shape[-1], pos, parents, dtype)

    def lean_inputs(self, T: int, pos: Tensor, parents: Tensor | None, dtype: torch.dtype,
                    new_mask: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        """``inputs`` for the fast path, whose attention reads no mask over a cache without padding or holes (``mask``
        None), where every cached position is visible: a chain of T frames sees its own frames causally (the "causal
        tail" ``mmspec.fast.FastDecoder`` takes as mask None), so it gets ``(None, positions)``; a tree gets the mask of
        its own frames only, ``[R, 1, T, T]`` (the decoder reads the cached columns as visible)."""
        if self.mask is None and new_mask is None:
            if parents is None:
                return None, pos[:, None] + torch.arange(T, device=pos.device)[None] if T > 1 else pos[:, None]
            p = rows_of(parents, pos.shape[0])  # [R, T]
            own = torch.zeros(p.shape[0], 1, T, T, dtype=dtype, device=pos.device)
            return own.masked_fill_(~tree.ancestors(p)[:, None], torch.finfo(dtype).min), pos[:, None] + tree.depths(p) - 1
        return self.inputs(T, pos, parents, dtype, new_mask)

    def inputs(self, T: int, pos: Tensor, parents: Tensor | None, dtype: torch.dtype,
               new_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The one input builder for a chain or a tree of ``T`` new frames: an additive ``mask [R, 1, T, S + T]``
        and ``positions [R, T]`` (``pos [R]``: the position of the first new frame, padding offset applied).

        A chain (``parents`` None): frame t sees the cached positions that are not padding and new frames
        <= t, at ``pos + t`` (clamped at 0: a row's left padding); ``new_mask [R, T]`` (1 = real) hides new
        padding frames (a prefill). A tree: see ``tree``. Call it before ``grow``."""
        R, S = pos.shape[0], self.length
        device = pos.device
        if parents is None:
            seen = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None].expand(R, T, T)
            if new_mask is not None:
                eye = torch.eye(T, dtype=torch.bool, device=device)
                seen = seen & (new_mask.bool()[:, None, :] | eye)  # a padding frame still sees itself
            positions = pos[:, None] + torch.arange(T, device=device)[None]
        else:
            p = rows_of(parents, R)  # [R, T]
            seen = tree.ancestors(p)  # [R, T, T]
            positions = pos[:, None] + tree.depths(p) - 1
        cached = torch.ones(R, S, dtype=torch.bool, device=device) if self.mask is None else self.mask[:, :S].bool()
        visible = torch.cat([cached[:, None, :].expand(R, T, S), seen], dim=-1)  # [R, T, S + T]
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
        return mask[:, None], positions.clamp(min=0)  # [R, 1, T, S + T], [R, T]

    def keep_path(self, T: int, path: Tensor) -> None:
        """After a forward of ``T`` frames: its frames at ``path [B, m]`` (rows may differ, same count) move
        to the front of those T, in order, and the rest are dropped: every layer's keys and values (the
        self-attention cache of an encoder-decoder model; the cross-attention cache is fixed), the mask and
        the fed frames. Rows of a doubled batch (``R = 2B``) keep their row's path."""
        if isinstance(self.kv, StaticKV):  # a static cache gathers in place
            self.kv.keep_tail(T, rows_of(path, self.kv.keys.shape[1]))
            layers = []
        else:
            layers = getattr(self.kv, "self_attention_cache", self.kv).layers
        for layer in layers:
            if getattr(layer, "is_sliding", False) or not isinstance(getattr(layer, "keys", None), Tensor):
                raise ValueError(f"a {type(layer).__name__} cache layer cannot keep a tree path (parents); "
                                 "use chain drafts with this model")
            index = rows_of(path, layer.keys.shape[0])  # [R, m]
            layer.keys = _gather_tail(layer.keys, 2, T, index)
            layer.values = _gather_tail(layer.values, 2, T, index)
        if self.mask is not None:
            self.mask = _gather_tail(self.mask, 1, T, rows_of(path, self.mask.shape[0]))
        if self.fed is not None:
            self.fed = _gather_tail(self.fed, 1, T, rows_of(path, self.fed.shape[0]))

    def select_rows(self, index: Tensor, B: int) -> None:
        """Keep the batch rows at ``index [B']`` (in that order) of the ``B`` rows: every layer's keys and values (a
        ``DynamicCache`` through its public ``reorder_cache``, a static cache through its own ``select_rows``), the
        mask and the fed frames. A doubled cache (``R = 2B``) keeps both guidance halves of each row (b and B + b)."""
        if self.rows:
            rows = halves(index, self.rows, B)  # [R'] cache rows
            if isinstance(self.kv, StaticKV):
                self.kv.select_rows(rows)
            else:
                self.kv.reorder_cache(rows)
        if self.mask is not None:
            self.mask = self.mask[halves(index, self.mask.shape[0], B).to(self.mask.device)]
        if self.fed is not None:
            self.fed = self.fed[halves(index, self.fed.shape[0], B).to(self.fed.device)]


def halves(index: Tensor, R: int, B: int) -> Tensor:
    """Batch rows ``index [B']`` of ``B`` -> the rows of a tensor of ``R`` rows that hold them: ``index`` (R = B), or
    both halves of a doubled batch (R = 2B: conditional rows first, unconditional second) ``[2B']``."""
    if R == B:
        return index
    if R != 2 * B:
        raise ValueError(f"a cache of {R} rows holds neither {B} batch rows nor both guidance halves of them")
    return torch.cat([index, index + B])


def rows_of(index: Tensor, R: int) -> Tensor:
    """``index [T]`` (shared) or ``[B, T]`` (per row) -> ``[R, T]``, repeating the B rows for each half of a
    doubled batch (R = 2B: conditional rows first, unconditional second)."""
    rows = index if index.dim() == 2 else index[None]
    if R % rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} rows of parents or path do not divide the cache's {R} rows")
    return rows.repeat(R // rows.shape[0], 1)


def _gather_tail(x: Tensor, dim: int, T: int, index: Tensor) -> Tensor:
    """``x`` whose last ``T`` entries along ``dim`` become those at ``index [R, m]`` (per row, in order)."""
    head, tail = x.narrow(dim, 0, x.shape[dim] - T), x.narrow(dim, x.shape[dim] - T, T)
    shape = [index.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = index.shape[1]
    full = list(tail.shape)
    full[dim] = index.shape[1]
    kept = tail.gather(dim, index.to(x.device).view(shape).expand(full))
    return torch.cat([head, kept], dim=dim)


class HFTarget:
    """Base of the Hugging Face adapters: ``cache`` (a ``KVCache``) and ``pos`` roll back together."""

    cache: KVCache
    pos: Tensor
    fast = None  # the fast path's decoder (``mmspec.fast.FastDecoder``), None for the eager HF forward
    per_row_commits = False  # True where every forward reads ``cache.mask`` (holes) and positions per row
    # (``mmspec.loop.rows_apart``); an adapter that reads ``cache.fed`` by step index keeps rows in lockstep
    selects_rows = False  # True where ``select_rows`` covers every per-row state of the adapter (``mmspec.compaction``)

    @property
    def forward_path(self) -> str:
        """``"fast"`` or ``"eager"``: which forward this target runs (bench and compare rows say it)."""
        return "eager" if self.fast is None else "fast"

    @torch.inference_mode()
    def select_rows(self, index: Tensor) -> None:
        """Keep the batch rows at ``index [B']`` (in that order) and drop the others: the cache (both guidance halves),
        ``pos`` and the recorded hidden state. An adapter with more per-row state extends it and declares
        ``selects_rows = True`` (``mmspec.loop`` drops rows that have ended only where the target and the drafter
        declare it)."""
        if not self.selects_rows:
            raise ValueError(f"{type(self).__name__} does not declare selects_rows: its per-row state would not follow "
                             "(rows that have ended stay in its batch)")
        B = self.pos.shape[0]
        self.cache.select_rows(index, B)
        self.pos = self.pos[index.to(self.pos.device)]
        hidden = getattr(self, "_hidden", None)
        if hidden is not None and hidden.shape[0] == B:
            self._hidden = hidden[index.to(hidden.device)]

    def keep(self, pos: Tensor, path: Tensor | None = None) -> None:
        """Forget everything after ``pos [B]``: the cache, its mask and fed frames, then ``pos``. With
        ``path [B, m]`` (a token tree): of the last forward's frames, those at ``path`` stay, in order (-1
        after a row's own count). Rows may keep different counts (``KVCache.rollback`` masks the extra slots)."""
        now = self.pos
        if path is not None:  # path [B, m]: -1 past a row's own count m_b (rows keep different counts)
            m = (path >= 0).sum(dim=1)  # [B]
            T = int((self.pos - pos + m).max())  # frames of the last forward (pos = before + m_b)
            self.cache.keep_path(T, path.clamp(min=0))  # padding gathers a kept frame; rollback hides it
            now = self.pos - T + path.shape[1]
        self.cache.rollback(now, pos)
        self.pos = pos.clone()


def fast_decoder(backbone: torch.nn.Module, fast: bool | None, who: str, why_not=None, build=None):
    """The fast path over ``backbone`` (``build(backbone)``; default ``mmspec.fast.FastDecoder``, a Llama-family stack)
    or None (the eager forward); ``why_not(backbone)`` says why a model cannot run on it (None: it can).

    ``fast``: True (on; a model the fast path cannot run falls back to eager with a warning naming why), False
    (eager), None (the default: on where it measured faster, a CPU with float32 or bfloat16 weights)."""
    from . import fast as fastpath

    check_fast(fast)
    weight = next(backbone.parameters())
    if fast is not True and (fast is False or weight.device.type != "cpu" or weight.dtype == torch.float16):
        eager_only(fast, who, "")
        return None
    reason = (why_not or fastpath.why_not)(backbone)
    if reason is not None:
        eager_only(fast, who, reason)
        return None
    return (build or fastpath.FastDecoder)(backbone)


def check_fast(fast) -> None:
    """``fast`` must be True, False or None; anything else is a ValueError saying so."""
    if fast is not None and not isinstance(fast, bool):
        raise ValueError(f"fast must be True, False or None (on where measured faster), got {fast!r}")


def eager_only(fast: bool | None, who: str, why: str) -> None:
    """For an adapter without the fast path: ``fast=True`` warns that it runs eager (and why); None/False are silent."""
    check_fast(fast)
    if fast:
        warnings.warn(f"{who}: the fast path is off for this model ({why}); running the eager forward", stacklevel=3)


def fast_head(linear: torch.nn.Module, start: int = 0, size: int | None = None):
    """A model's output head on the fast path: the rows ``[start, start + size)`` (all: ``size`` None) of its weight
    (and bias) prepacked (``mmspec.fast.PackedLinear``): hidden ``[..., H]`` -> logits ``[..., size]``."""
    from .fast import PackedLinear

    rows = slice(start, None if size is None else start + size)
    bias = getattr(linear, "bias", None)
    return PackedLinear([linear.weight[rows]], [None if bias is None else bias[rows]])


class HiddenStates:
    """The optional self-drafter capability (``mmspec.protocols``): record the last layer's hidden state of
    each forward, only while a self-drafter asked for it (``track_hidden``), so plain decoding pays nothing.

    An adapter mixes this in and, in its forward, passes ``output_hidden_states=self.hidden_wanted`` and
    hands the result to ``_record_hidden`` (sliced to the frames it returned logits for)."""

    hidden_wanted = False
    _hidden: Tensor | None = None

    @property
    def attention_heads(self) -> int | None:
        """Heads per attention layer, from the model's config (None where it names none at the top level)."""
        return getattr(getattr(self.model, "config", None), "num_attention_heads", None)

    def track_hidden(self, on: bool) -> None:
        """Record hidden states from the next forward on (``True``) or stop (``False``; drops the last one)."""
        self.hidden_wanted = bool(on)
        self._hidden = None

    def hidden(self) -> Tensor:
        """``[B, T, H]``: the last layer's hidden state (after the final norm: the output head's input) of the
        most recent ``start`` / ``forward``, for the frames that call returned logits for."""
        if self._hidden is None:
            raise ValueError(f"{type(self).__name__} recorded no hidden state: call track_hidden(True) before "
                             "start (the loop does it for a drafter whose wants_hidden is True)")
        return self._hidden

    def output_head(self) -> torch.nn.Module:
        """The target's frozen output projection (hidden ``[..., H]`` -> logits ``[..., K * V]``)."""
        return Projection(self.model.get_output_embeddings())

    def input_embeddings(self) -> torch.nn.Module:
        """The target's frozen frame embedding (frames ``[..., K]`` -> ``[..., E]``)."""
        return FrameEmbedding(self.model.get_input_embeddings())

    def _record_hidden(self, out, T: int, rows: int | None = None) -> None:
        """Keep the last layer's state of the last ``T`` frames (of the first ``rows`` batch rows: the
        conditional half of a guided batch)."""
        if self.hidden_wanted:
            self._hidden = last_hidden(out)[:rows, -T:]  # [B, T, H]


def last_hidden(out) -> Tensor:
    """The final-norm state ``[R, T, H]`` in a model's output: ``hidden`` (mmspec's own models),
    ``last_hidden_state`` (a base model, returned always), else the last entry of ``decoder_hidden_states``
    (an encoder-decoder model) or ``hidden_states`` (a model with a head), which transformers ties to the
    final norm's output; those two need ``output_hidden_states=True``."""
    for name in ("hidden", "last_hidden_state"):
        h = getattr(out, name, None)
        if h is not None:
            return h
    for name in ("decoder_hidden_states", "hidden_states"):
        states = getattr(out, name, None)
        if states:
            return states[-1]
    raise ValueError(f"{type(out).__name__} holds no hidden state: run the model with output_hidden_states=True")


class Projection(torch.nn.Module):
    """A target's output projection restricted to the rows ``[start, start + size)`` of its weight (all
    rows: ``size`` None): hidden ``[..., H]`` -> logits ``[..., size]``, sharing the target's frozen weight
    (an ``mmspec.protocols.OutputHead``: one linear map)."""

    def __init__(self, linear: torch.nn.Linear, start: int = 0, size: int | None = None):
        super().__init__()
        self.linear, self.start, self.size = linear, start, size

    @property
    def hidden_size(self) -> int:
        return int(self.linear.weight.shape[1])

    @property
    def weight(self) -> Tensor:
        w = self.linear.weight
        return w if self.size is None else w[self.start: self.start + self.size]  # [R, H]

    @property
    def bias(self) -> Tensor | None:
        b = self.linear.bias
        return b if b is None or self.size is None else b[self.start: self.start + self.size]  # [R]

    def identity(self) -> Tensor:
        return self.weight

    def as_linear(self) -> tuple[Tensor, Tensor | None] | None:
        return (self.weight, self.bias) if isinstance(self.linear, torch.nn.Linear) else None

    def forward(self, x: Tensor) -> Tensor:
        if self.size is None:
            return self.linear(x)
        return torch.nn.functional.linear(x, self.weight, self.bias)


class FrameEmbedding(torch.nn.Module):
    """A target's frozen input embedding of whole frames: frames ``[..., K]`` (ids per codebook) -> the sum of
    the rows ``table[frame[k] + offsets[k]]``, ``[..., E]`` (text: K = 1, offset 0)."""

    def __init__(self, table: torch.nn.Embedding, offsets: Sequence[int] = (0,)):
        super().__init__()
        self.table, self.offsets = table, tuple(int(o) for o in offsets)

    @property
    def embed_size(self) -> int:
        return int(self.table.weight.shape[1])

    def forward(self, frames: Tensor) -> Tensor:
        offsets = torch.tensor(self.offsets, device=frames.device)  # [K]
        return self.table(frames.clamp(min=0) + offsets).sum(-2)  # [..., E]


# -- left-padded batches ---------------------------------------------------------------------------

def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: str | torch.device) -> tuple[Tensor, Tensor]:
    """Id rows of different lengths -> left-padded ``ids [B, L]`` and pad counts ``pads [B]``."""
    L = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (L - len(r)) + list(r) for r in rows], dtype=torch.long)
    pads = torch.tensor([L - len(r) for r in rows], dtype=torch.long)
    return ids.to(device), pads.to(device)


def padding_mask(pads: Tensor, length: int) -> Tensor:
    """``pads [R]`` -> attention mask ``[R, length]``: 0 on each row's left padding, 1 after."""
    return (torch.arange(length, device=pads.device)[None, :] >= pads[:, None]).long()


def position_ids(pos: Tensor, T: int) -> Tensor:
    """Positions ``[R, T]`` of T new inputs at ``pos [R]`` (real tokens before them; pads at 0)."""
    return (pos[:, None] + torch.arange(T, device=pos.device)[None, :]).clamp(min=0)


# -- classifier-free guidance over a doubled batch -------------------------------------------------

@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance over a doubled batch (conditional rows first, unconditional second), one object for
    every guided adapter: ``scale`` (>= 0; 1 = unguided), ``interval`` (lo, hi), the fractions of the frames to
    generate where it applies, and whether it guides only above 1 (``above_one``: MusicGen, as HF ``generate``
    does it). ``Guidance.of`` validates; ``on`` says whether the doubled batch runs; ``mix`` guides."""

    scale: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    above_one: bool = False

    @classmethod
    def of(cls, scale, interval=None, *, above_one: bool = False) -> "Guidance":
        scale, interval = check_guidance(scale, interval)
        return cls(scale, interval, above_one)

    @property
    def on(self) -> bool:
        return self.scale > 1.0 if self.above_one else self.scale != 1.0

    def mix(self, logits: Tensor, rows: int, index: Tensor | None = None, total: int = 1) -> Tensor:
        """Guided logits ``[rows, ...]`` from a doubled batch ``[2 * rows, ...]`` (returned as is when off); with
        ``index [1 or rows, T]``, the generated-frame index each logit predicts (of ``total``), guidance applies only
        inside ``interval`` (the conditional logits elsewhere)."""
        if not self.on:
            return logits
        inside = None if index is None else inside_interval(index, total, self.interval)[..., None]
        return guide(logits[:rows], logits[rows:], self.scale, inside)


def check_guidance(guidance_scale, guidance_interval=None) -> tuple[float, tuple[float, float]]:
    """Validate a guidance scale (a number >= 0; 1 = unguided) and an interval ``(lo, hi)`` of fractions
    of the frames to generate, 0 <= lo < hi <= 1 (None = all of them)."""
    bad = isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float))
    if bad or not 0 <= guidance_scale < float("inf"):
        raise ValueError(f"guidance scale (guidance_scale) must be a finite number >= 0 (1 = unguided), "
                         f"got {guidance_scale!r}")
    try:
        interval = (0.0, 1.0) if guidance_interval is None else tuple(float(x) for x in guidance_interval)
    except (TypeError, ValueError):
        interval = ()
    if len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0:
        raise ValueError(f"guidance interval (guidance_interval) must be two fractions 0 <= lo < hi <= 1, "
                         f"got {guidance_interval!r}")
    return float(guidance_scale), interval


def inside_interval(index: Tensor, total: int, interval: tuple[float, float]) -> Tensor:
    """Which generated-frame indices ``index [T]`` (of ``total``) lie inside ``interval``: BoolTensor ``[T]``."""
    frac = index.float() / total
    return (frac >= interval[0]) & (frac < interval[1])


def guide(cond: Tensor, uncond: Tensor, scale: float, inside: Tensor | None = None) -> Tensor:
    """``uncond + scale * (cond - uncond)`` (the two halves of a doubled batch); where ``inside`` (broadcast
    to the logits) is False, the conditional logits unchanged."""
    mixed = uncond + scale * (cond - uncond)
    return mixed if inside is None else torch.where(inside, mixed, cond)


def prompt_texts(prompt, what: str = "prompt") -> list[str]:
    """A text prompt (one string, or a list/tuple of strings: one row each) -> the list of texts.

    Anything else (a dict, a number, an empty or blank text, text that is not valid Unicode such as a lone
    surrogate) is a ValueError naming ``what``."""
    texts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"{what} must be non-empty text (a string or a list of non-empty strings), got {prompt!r}")
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{what} is not valid Unicode text ({err.reason} at character {err.start})") from None
    return texts
