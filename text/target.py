"""The text adapter: a Target over any Hugging Face causal LM (``AutoModelForCausalLM``) and its tokenizer.

Frames are single tokens (K = 1). Batches are left-padded; ``pos`` counts each row's real tokens, so
positions (and reproducible noise) do not depend on the padding. The cache, its rollback, the padding
and the device/dtype policy are ``mmspec.hf``'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mmspec import files, hf

ZOO = Path(__file__).parent / "zoo"
NOT_TEXT = ("janus", "musicgen", "musicgen_melody")  # causal LMs by registration, but not text-to-text models


def resolve(name_or_path: str) -> str:
    """``zoo:NAME`` -> the shipped folder; a local path must exist; anything else is a hub id."""
    return files.resolve(name_or_path, ZOO, "config.json", "text")


def check_causal_lm(path: str, trust_remote_code: bool = False) -> None:
    """Refuse a folder whose ``config.json`` is not a text causal LM (read before any model is built)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = hf.read_config(path)
    kind = config.get("model_type")
    remote = trust_remote_code and "AutoModelForCausalLM" in (config.get("auto_map") or {})
    if kind in NOT_TEXT or not (kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or remote):
        raise ValueError(f"{path!r} holds a {kind!r} model, not a text causal LM (config.json model_type must be "
                         f"a causal LM such as 'llama', 'qwen2' or 'gpt2')")


def _load(loader, name: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ValueError(f"could not load {name!r} as a local folder or hub model: {str(err).splitlines()[0]}") from err


class TextTarget(hf.HiddenStates, hf.HFTarget):
    """Target over a causal LM. ``TextTarget.from_pretrained("zoo:code-target")`` or any hub name/path."""

    num_codebooks = 1
    per_row_commits = True  # rows commit their own counts: the mask holds their holes (mmspec.hf.KVCache)
    selects_rows = True  # select_rows keeps the cache, positions and prompt rows of the rows still running

    def __init__(self, model, tokenizer, *, chat: bool = False, device: str | torch.device | None = None,
                 fast: bool | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat = chat
        self.device = hf.resolve_device(device) if device is not None else next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        config = model.config
        self.max_frames = int(getattr(config, "max_position_embeddings", None) or 1_000_000)
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = torch.tensor([e for e in (eos if isinstance(eos, list) else [eos]) if e is not None], dtype=torch.long)
        self.pos = torch.zeros(1, dtype=torch.long)
        self._cache_arg = hf.cache_arg(model)
        # the fast path (mmspec.fast): a static cache and prepacked products; None = the eager HF forward
        self.fast = hf.fast_decoder(model.base_model, fast, type(self).__name__)
        if self.fast is not None:
            self._embed = model.get_input_embeddings()
            self._head = hf.fast_head(model.get_output_embeddings())

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        device_map: str | None = None,
        trust_remote_code: bool = False,
        chat: bool = False,
        fast: bool | None = None,
    ) -> "TextTarget":
        """Load model and tokenizer by hub name, local path or ``zoo:NAME``.

        ``dtype`` and ``device`` follow ``mmspec.hf.resolve_dtype`` / ``resolve_device`` ("auto" keeps the
        saved dtype); ``device_map="auto"`` spreads a model larger than one GPU through accelerate. The
        folder must hold a causal LM config (checked before anything is built). ``fast``: the static-cache forward
        on prepacked weights (``mmspec.fast``; None = on where it measured faster: a CPU, float32 or bfloat16).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve(name_or_path)
        if device_map is None:
            device = hf.resolve_device(device)
        dtype = hf.resolve_dtype(dtype, device if device_map is None else hf.resolve_device(None))
        check_causal_lm(path, trust_remote_code)
        kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = _load(AutoModelForCausalLM, path, **kwargs)
        if device_map is None:
            model = model.to(device)
        tokenizer = _load(AutoTokenizer, path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, chat=chat, device=None if device_map else device, fast=fast)

    # -- prompts ---------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompt text(s) -> left-padded ids ``[B, L]`` and pad counts ``[B]``."""
        texts = hf.prompt_texts(prompt)
        rows = []
        for text in texts:
            if self.chat:
                ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            else:
                ids = self.tokenizer(text)["input_ids"]
            rows.append(list(ids))
        L = max(len(r) for r in rows)
        if L >= self.max_frames:
            raise ValueError(f"prompt is {L} tokens long; the model's context holds {self.max_frames} (prompt + new tokens)")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return hf.left_pad(rows, pad_id, self.device)

    # -- Target protocol -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, prompt: str | Sequence[str], max_new_tokens: int) -> Tensor:
        ids, self.pads = self.encode(prompt)  # [B, L], [B]
        self.prompt, self.prompt_ids = prompt, ids
        self.padded = bool(self.pads.any())  # unpadded batches run without mask and positions, as HF does
        mask = hf.padding_mask(self.pads, ids.shape[1]) if self.padded else None  # [B, L]
        kv = "new" if self.fast is None else self.fast.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens + 64)
        self.cache = hf.KVCache(mask=mask, kv=kv)
        self.pos = -self.pads  # so that pos counts real tokens after the prefill
        return self.forward(ids[..., None], keep_last=True)  # [B, 1, 1, V]

    def select_rows(self, index: Tensor) -> None:
        """Keep the batch rows at ``index [B']`` (``mmspec.hf.HFTarget.select_rows``), their prompts too."""
        super().select_rows(index)
        self.pads, self.prompt_ids = self.pads[index], self.prompt_ids[index]
        if isinstance(self.prompt, (list, tuple)):
            self.prompt = [self.prompt[i] for i in index.tolist()]

    def prompt_frames(self) -> list[Tensor]:
        return [row[int(p) :, None] for row, p in zip(self.prompt_ids, self.pads)]  # per row [L_b, 1]

    @torch.inference_mode()
    def forward(self, frames: Tensor, parents: Tensor | None = None, keep_last: bool = False) -> Tensor:
        if self.fast is not None:
            return self._fast_forward(frames[..., 0], parents, keep_last)
        T = frames.shape[1]
        ids = frames[..., 0]  # [B, T]
        kwargs = {}
        if parents is not None:  # a token tree: 4-D mask over padding and ancestors, positions by depth
            kwargs["attention_mask"], kwargs["position_ids"] = self.cache.tree(parents, self.pos, self.model.dtype)
            self.cache.grow(T)
        elif self.cache.mask is not None:  # left padding, or holes of rows that committed fewer frames
            kwargs["attention_mask"] = self.cache.grow(T)  # [B, S + T]
            kwargs["position_ids"] = hf.position_ids(self.pos, T)  # [B, T]
        if keep_last:
            kwargs["logits_to_keep"] = 1
        if self.hidden_wanted:  # a self-drafter reads the last layer's state of this very forward
            kwargs["output_hidden_states"] = True
        kwargs[self._cache_arg] = self.cache.kv
        out = self.model(input_ids=ids, use_cache=True, **kwargs)
        self._record_hidden(out, out.logits.shape[1])
        self.pos = self.pos + T
        return out.logits[:, :, None, :]  # [B, T, 1, V]

    def _fast_forward(self, ids: Tensor, parents: Tensor | None, keep_last: bool) -> Tensor:
        """The fast path's forward over ``ids [B, T]`` (a chain, or a tree with ``parents``): logits ``[B, T, 1, V]``."""
        T = ids.shape[1]
        prefill = self.cache.length == 0 and self.padded
        if prefill and keep_last:
            return self._prefill_rows(ids)
        mask, positions = self.cache.lean_inputs(T, self.pos, parents, self.fast.dtype,
                                                 new_mask=self.cache.mask if prefill else None)
        self.cache.grow(T)
        hidden = self.fast(self._embed(ids), positions, mask, self.cache.kv)  # [B, T, H]
        if keep_last:
            hidden = hidden[:, -1:]
        if self.hidden_wanted:
            self._hidden = hidden
        self.pos = self.pos + T
        return self._head(hidden)[:, :, None, :]  # [B, T, 1, V]

    def _prefill_rows(self, ids: Tensor) -> Tensor:
        """A left-padded batch's prefill on the fast path, row by row over each row's own tokens (``ids [B, L]``): the
        padded forward would run every row's padding through every product (at B = 8 with the bench's code prompts,
        38% of its rows). Each row writes its slots after its padding (``StaticKV.row``), at positions 0.. as in the
        padded forward, its attention masking the padding slots; returns the last frame's logits ``[B, 1, 1, V]``."""
        B, L = ids.shape
        kv, last = self.cache.kv, []
        self.cache.grow(L)  # the padding mask already covers the prompt: nothing to add
        lowest = torch.finfo(self.fast.dtype).min
        for b in range(B):
            pad = int(self.pads[b])
            T = L - pad
            if T == 0:
                raise ValueError(f"prompt {b} encodes to no tokens with this tokenizer; give it some text")
            seen = torch.ones(T, L, dtype=torch.bool, device=ids.device).tril(pad)  # [T, L] causal past the padding
            seen[:, :pad] = False
            mask = torch.zeros(1, 1, T, L, dtype=self.fast.dtype, device=ids.device).masked_fill(~seen, lowest)
            positions = torch.arange(T, device=ids.device)[None]  # [1, T]
            hidden = self.fast(self._embed(ids[b: b + 1, pad:]), positions, mask, kv.row(b, pad))  # [1, T, H]
            last.append(hidden[:, -1:])
        kv.length = L
        hidden = torch.cat(last)  # [B, 1, H]
        if self.hidden_wanted:
            self._hidden = hidden
        self.pos = self.pos + L
        return self._head(hidden)[:, :, None, :]  # [B, 1, 1, V]

    def finished(self, frames: Tensor) -> Tensor:
        return torch.isin(frames[..., 0], self.eos_ids.to(frames.device))  # [B, T]

    def decode(self, frames: Tensor, lengths: Tensor) -> list[str]:
        return [
            self.tokenizer.decode(frames[b, : int(lengths[b]), 0].tolist(), skip_special_tokens=True)
            for b in range(frames.shape[0])
        ]

    # -- pairing ---------------------------------------------------------------------------------
    def check_draft(self, draft: "TextTarget") -> None:
        """Refuse a draft model whose tokenizer differs (embedding padding beyond it is fine)."""
        if not isinstance(draft, TextTarget):
            raise ValueError(f"a text target needs a text draft model, got {type(draft).__name__}")
        if self.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
            raise ValueError(
                "draft model's tokenizer differs from the target's; draft-model speculation needs the same "
                "tokenizer (cross-tokenizer drafting is not supported)"
            )
