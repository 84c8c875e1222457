"""What every Hugging Face adapter shares, so that each adapter keeps only its quirk.

* **Device and dtype**: one policy for every adapter (``resolve_device``, ``resolve_dtype``). No device
  given: CUDA if there is one, else the CPU. No dtype given: float32 on the CPU; on CUDA bfloat16 where
  the GPU supports it, else float16 (the same for every adapter).
* **The model kind**: ``check_model_type`` reads a folder's (or hub id's) ``config.json`` before anything
  is built, so a folder of the wrong kind is a clear ValueError, never a default-size random model.
* **The cache**: ``KVCache`` holds the model's ``DynamicCache`` with what must stay aligned with it (the
  attention mask over left padding, the frames fed); ``HFTarget.keep`` crops them together through the
  cache's public ``crop(-n)``. ``cache_arg`` names the forward argument that takes it.
* **Left-padded batches**: ``left_pad`` turns id rows into ``ids [B, L]`` and ``pads [B]``;
  ``padding_mask`` and ``position_ids`` follow, so positions count real tokens only.
* **Classifier-free guidance over a doubled batch**: conditional rows first, unconditional rows second,
  one cache, rolled back together; ``guide`` mixes ``uncond + s * (cond - uncond)``, optionally only
  inside an interval of the frames to generate (``check_guidance``, ``inside_interval``).
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

import torch
from torch import Tensor

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

    def grow(self, T: int, frames: Tensor | None = None) -> Tensor | None:
        """Before a forward of ``T`` new positions: extend the mask with ones to cover them and remember
        ``frames [R, T, K]``; returns the mask the forward takes."""
        if self.mask is not None and self.length + T > self.mask.shape[1]:
            new = self.length + T - self.mask.shape[1]
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], new)], dim=1)
        if frames is not None and self.fed is not None:
            self.fed = torch.cat([self.fed, frames], dim=1)
        return self.mask

    def rollback(self, now: Tensor, pos: Tensor, who: str) -> int:
        """Forget the positions after ``pos [B]`` (rows are at ``now [B]``); returns how many were removed.

        The loop commits the batch minimum, so every row moves back by the same count; ``crop(-n)``
        removes n positions in every transformers version (a positive argument means "keep n" in 4.x and
        is refused in 5.x), and it is never called with 0. Both guidance halves live in the same cache.
        """
        remove = int((now - pos).max())
        if not bool(((now - pos) == remove).all()):
            raise ValueError(f"{who} rolls all rows back by the same number of frames")
        if remove > 0:
            self.kv.crop(-remove)
            if self.mask is not None:
                self.mask = self.mask[:, :-remove]
            if self.fed is not None:
                self.fed = self.fed[:, :-remove]
        return remove


class HFTarget:
    """Base of the Hugging Face adapters: ``cache`` (a ``KVCache``) and ``pos`` roll back together."""

    cache: KVCache
    pos: Tensor

    def chain_only(self, tree) -> None:
        """Refuse a token tree (``parents`` or a kept ``path``) where the adapter verifies chains only."""
        if tree is not None:
            raise ValueError(f"{type(self).__name__} verifies chains only, not token trees")

    def keep(self, pos: Tensor, path: Tensor | None = None) -> None:
        """Forget everything after ``pos [B]``: the cache, its mask and fed frames, then ``pos``."""
        self.chain_only(path)
        self.cache.rollback(self.pos, pos, type(self).__name__)
        self.pos = pos.clone()


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
