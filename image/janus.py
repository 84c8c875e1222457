"""Janus / Janus-Pro text-to-image generation as a Target (Hugging Face ``JanusForConditionalGeneration``).

Janus generates image tokens with its language model fed by *generation* embeddings
(``prepare_embeddings_for_image_generation``) and scored by its ``generation_head`` (not the text
``lm_head``). This adapter mirrors ``JanusForConditionalGeneration.generate(generation_mode="image")``:

* the prompt is text ending with the begin-of-image token (the processor adds it with
  ``generation_mode="image"``), or already tokenized ids;
* CFG with a doubled batch: conditional rows get the prompt, unconditional rows the same ids with every
  token except BOS and BOI replaced by the pad token; logits = u + s * (c - u) (HF applies it for s > 1);
* V = the VQ codebook size (the generation head's outputs), K = 1, ``max_frames`` = prompt + image tokens;
* committed codes decode through ``decode_image_tokens`` to a ``PIL.Image``;
* self-drafters (``mmspec.protocols.HiddenTarget``): ``hidden()`` is the language model's final-norm state
  of the conditional rows, read through the generation head (``output_head``) and fed the generation
  embedding + aligner (``input_embeddings``), the very modules the forward uses.

Batches are left-padded; ``pos`` counts each row's real tokens, as in the text adapter. Cache, rollback,
padding, guidance and the device/dtype policy are ``mmspec.hf``'s. On a CPU the language model (a Llama) runs on
the fast path (``mmspec.fast``: a static cache, prepacked products) by default; the generation embedding and head
stay Janus' own modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmspec import hf, tree

from .target import grid_codes

DEFAULT_GUIDANCE = 5.0  # Janus-Pro's own, when the saved generation config names none


class JanusTarget(hf.HiddenStates, hf.HFTarget):
    num_codebooks = 1

    def __init__(self, model, processor=None, *, guidance_scale: float | None = None, guidance_interval=None,
                 device: str | torch.device | None = None, path: str = "", boi_token_id: int | None = None,
                 fast: bool | None = None):
        self.model, self.processor, self.path = model.eval(), processor, path
        self.device = hf.resolve_device(device) if device is not None else next(model.parameters()).device
        self.lm = model.model.language_model
        gen = model.generation_config
        self.pad_id, self.bos_id = gen.pad_token_id, gen.bos_token_id
        self.boi_id = boi_token_id if boi_token_id is not None else (getattr(gen, "generation_kwargs", None) or {}).get("boi_token_id")
        if self.boi_id is None and processor is not None:
            tok = getattr(processor, "tokenizer", processor)
            self.boi_id = tok.convert_tokens_to_ids(getattr(tok, "boi_token", None) or "<begin_of_image>")
        if self.pad_id is None or self.boi_id is None:
            raise ValueError("Janus generation_config needs pad_token_id and generation_kwargs['boi_token_id']")
        self.vocab_size = int(model.model.vqmodel.config.num_embeddings)  # V: image codes only
        self.grid_tokens = int(model.model.vision_model.config.num_image_tokens)
        self.grid_h = self.grid_w = math.isqrt(self.grid_tokens)
        saved = getattr(gen, "guidance_scale", None)  # a saved 0 stays 0 (only None means "not saved")
        default = DEFAULT_GUIDANCE if saved is None else saved
        self.guidance = hf.Guidance.of(default if guidance_scale is None else guidance_scale, guidance_interval)
        self.guidance_scale, self.guidance_interval = self.guidance.scale, self.guidance.interval
        self._cache_arg = hf.cache_arg(self.lm)
        self.max_frames = 1_000_000
        self.pos = torch.zeros(1, dtype=torch.long)
        # the fast path (mmspec.fast) runs the language model; the embeddings and the generation head stay Janus' own
        self.fast = hf.fast_decoder(self.lm, fast, type(self).__name__)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, guidance_scale=None, guidance_interval=None, device=None,
                        dtype=None, fast: bool | None = None) -> "JanusTarget":
        """Load a Janus / Janus-Pro folder or hub id; its ``config.json`` must say ``model_type: janus``
        (checked before anything is built). ``device`` / ``dtype``: ``mmspec.hf``'s policy. ``fast``: the language
        model's static-cache forward on prepacked weights (``mmspec.fast``; None = on for a CPU)."""
        from transformers import AutoProcessor, JanusForConditionalGeneration

        hf.check_fast(fast)
        device = hf.resolve_device(device)
        dtype = hf.resolve_dtype(dtype, device)
        hf.check_model_type(name_or_path, ("janus",), "a Janus model")
        try:
            model = JanusForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype).to(device)
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load {name_or_path!r} as an image model: {str(err).splitlines()[0]}") from err
        try:
            processor = AutoProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError):
            processor = None
        return cls(model, processor, guidance_scale=guidance_scale, guidance_interval=guidance_interval, device=device,
                   path=str(name_or_path), boi_token_id=_saved_boi(name_or_path), fast=fast)

    @property
    def guided(self) -> bool:
        return self.guidance.on

    # -- prompts ---------------------------------------------------------------------------------
    def encode(self, prompt) -> tuple[Tensor, Tensor]:
        """Text(s) or token id lists -> left-padded ids ``[B, L]`` (ending with BOI) and pad counts ``[B]``."""
        if isinstance(prompt, Tensor):
            rows = [list(map(int, r)) for r in (prompt[None] if prompt.dim() == 1 else prompt).tolist()]
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(x, int) for x in prompt):
            rows = [list(prompt)]
        else:
            texts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
            if not texts or any(not isinstance(t, (str, list, tuple)) or not len(t) for t in texts):
                raise ValueError("Janus prompt must be non-empty text, a list of texts or token id lists")
            rows = [list(t) if not isinstance(t, str) else self._tokenize(hf.prompt_texts(t, "Janus prompt")[0])
                    for t in texts]
        return hf.left_pad(rows, self.pad_id, self.device)

    def _tokenize(self, text: str) -> list[int]:
        if self.processor is None:
            raise ValueError("this Janus model has no processor/tokenizer; pass token ids as the prompt")
        out = self.processor(text=[text], generation_mode="image", return_tensors="pt")
        return out["input_ids"][0].tolist()

    # -- Target protocol -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, prompt, max_new_tokens: int) -> Tensor:
        ids, self.pads = self.encode(prompt)  # [B, L], [B]
        self.prompt, self.prompt_ids, self.B = prompt, ids, ids.shape[0]
        # 1. unconditional rows: every token but BOS / BOI becomes the pad token
        if self.guided:
            uncond = ids.masked_fill((ids != self.bos_id) & (ids != self.boi_id), self.pad_id)
            ids = torch.cat([ids, uncond])  # [2B, L]
        pads = self.pads.repeat(ids.shape[0] // self.B)  # [B|2B]
        self.pos = -self.pads
        self.first = ids.shape[1] - self.pads  # [B] pos at grid index 0
        self.max_frames = int(self.first.max()) + self.grid_tokens
        mask = hf.padding_mask(pads, ids.shape[1])  # [B|2B, L]
        if self.fast is None:
            self.cache = hf.KVCache(mask=mask)
        else:  # slots for the prompt, the grid and a verify's frames; an unpadded batch runs without a mask
            kv = self.fast.new_cache(ids.shape[0], ids.shape[1] + self.grid_tokens + 64)
            self.cache = hf.KVCache(mask=mask if bool(pads.any()) else None, kv=kv)
        embeds = self.model.get_input_embeddings()(ids)  # [2B, L, H]
        return self._run(embeds, keep_last=True)  # [B, 1, 1, V]

    def prompt_frames(self) -> list[Tensor]:
        return [torch.zeros(0, 1, dtype=torch.long, device=self.device) for _ in range(self.B)]

    @torch.inference_mode()
    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        codes = frames[..., 0]  # [B, T]
        if self.guided:
            codes = torch.cat([codes, codes])
        return self._run(self.model.prepare_embeddings_for_image_generation(codes), parents=parents)  # [B, T, 1, V]

    def _run(self, embeds: Tensor, keep_last: bool = False, parents: Tensor | None = None) -> Tensor:
        """Language model over ``embeds [B|2B, T, H]`` (a token tree with ``parents [T] or [B, T]``); guided
        generation-head logits ``[B, T', 1, V]``."""
        rows, T = embeds.shape[:2]
        pos = self.pos.repeat(rows // self.B)  # [B|2B]
        if self.fast is not None:
            hidden = self._fast_run(embeds, pos, parents)  # [B|2B, T, H]
            hidden = hidden[:, -1:] if keep_last else hidden
            if self.hidden_wanted:
                self._hidden = hidden[: self.B]  # the conditional half (see output_head)
        else:
            if parents is not None:  # each node sees its ancestors and sits at pos + depth - 1
                mask, positions = self.cache.tree(parents, pos, embeds.dtype)  # [R, 1, T, S + T], [R, T]
                self.cache.grow(T)
            else:
                mask, positions = self.cache.grow(T), hf.position_ids(pos, T)  # [B|2B, S + T], [B|2B, T]
            out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{self._cache_arg: self.cache.kv})
            # last_hidden_state [B|2B, T, H] is after the final norm (a base model returns it always)
            hidden = out.last_hidden_state[:, -1:] if keep_last else out.last_hidden_state
            self._record_hidden(out, hidden.shape[1], rows=self.B)  # the conditional half (see output_head)
        logits = self.model.model.generation_head(hidden).float()  # [B|2B, T', V]
        if self.guided:
            # the input at position pos + t (a tree: depth - 1 after pos) predicts grid index pos + t + 1 - first
            step = (T - logits.shape[1] + torch.arange(logits.shape[1], device=self.device))[None]  # [1, T']
            if parents is not None:
                step = tree.depths(hf.rows_of(parents, self.B)) - 1  # [B, T]
            index = (self.pos - self.first)[:1, None] + 1 + step  # [1|B, T'] grid index predicted
            logits = self.guidance.mix(logits, self.B, index, self.grid_tokens)  # [B, T', V]
        self.pos = self.pos + T
        return logits[:, :, None, :]  # [B, T', 1, V]

    def _fast_run(self, embeds: Tensor, pos: Tensor, parents: Tensor | None) -> Tensor:
        """The language model on the fast path over ``embeds [R, T, H]`` at ``pos [R]`` (a tree with ``parents``; the
        prefill of a left-padded batch hides its padding frames): the final-norm state ``[R, T, H]``."""
        T = embeds.shape[1]
        prefill = self.cache.length == 0 and self.cache.mask is not None
        mask, positions = self.cache.lean_inputs(T, pos, parents, self.fast.dtype,
                                                 new_mask=self.cache.mask if prefill else None)
        self.cache.grow(T)
        return self.fast(embeds, positions, mask, self.cache.kv)

    def finished(self, frames: Tensor) -> Tensor:
        return torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)

    @torch.inference_mode()
    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        """Committed codes -> ``PIL.Image`` per row (an unfinished grid is padded with code 0)."""
        from PIL import Image

        codes = grid_codes(frames.to(self.device), lengths, self.grid_tokens)  # [B, h * w]
        from .models import to_uint8

        pixels = self.model.decode_image_tokens(codes)  # [B, H, W, 3] in [-1, 1]
        return [Image.fromarray(a.numpy()) for a in to_uint8(pixels.permute(0, 3, 1, 2))]  # as the zoo adapter

    def check_draft(self, draft) -> None:
        if not isinstance(draft, JanusTarget) or draft.vocab_size != self.vocab_size or draft.grid_tokens != self.grid_tokens:
            raise ValueError("a Janus target needs a Janus draft with the same image codebook and grid")

    def codebook(self) -> Tensor:
        """L2-normalised VQ codebook ``[V, E]`` (Janus looks codes up normalised), for LANTERN."""
        return F.normalize(self.model.model.vqmodel.quantize.embedding.weight.detach().float(), dim=-1)

    # -- self-drafter capability (``mmspec.protocols.HiddenTarget``) ------------------------------
    def output_head(self) -> torch.nn.Module:
        """The generation head (an MLP, not the text ``lm_head``): hidden ``[..., H]`` -> code logits ``[..., V]``,
        the forward's logits before guidance.

        Under guidance ``hidden()`` is the conditional rows' state, so a self-drafter guesses the conditional
        distribution, not the guided mix ``u + s * (c - u)``; that costs acceptance, never exactness: the
        rules verify every draft with the target's guided logits. The unconditional rows are fed the same
        committed codes by the same forward and keep their cache, so they need nothing from the drafter."""
        return GenerationHead(self.model.model.generation_head)

    def input_embeddings(self) -> torch.nn.Module:
        """Code frames ``[..., 1]`` -> ``[..., H]``: the generation embedding then the aligner, as ``forward``
        embeds a code (``prepare_embeddings_for_image_generation``)."""
        return CodeEmbedding(self.model.model.generation_embeddings, self.model.model.generation_aligner)


class GenerationHead(torch.nn.Module):
    """Janus's frozen generation head as a self-drafter reads it (an ``mmspec.protocols.OutputHead``): hidden
    ``[..., H]`` -> ``[..., V]`` through the target's own module (``proj_out``, activation, ``vision_head``).
    Not one linear map (``as_linear`` is None), so a drafter reads it as it is; ``proj_out``'s weight, the map
    that reads the state, identifies it."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.mlp = head

    @property
    def hidden_size(self) -> int:
        return int(self.mlp.proj_out.weight.shape[1])

    def identity(self) -> Tensor:
        return self.mlp.proj_out.weight  # [P, H]

    def as_linear(self) -> None:
        return None

    def forward(self, hidden: Tensor) -> Tensor:
        return self.mlp(hidden)  # [..., V]


class CodeEmbedding(torch.nn.Module):
    """Janus's frozen embedding of image codes (an ``mmspec.protocols.FrameEmbedder``): frames ``[..., 1]`` ->
    ``aligner(table[code])`` ``[..., E]``, E the size of the aligner's output (the table itself is ``[V, e]``,
    with e the small VQ embedding size)."""

    def __init__(self, table: torch.nn.Module, aligner: torch.nn.Module):
        super().__init__()
        self.table, self.aligner = table, aligner

    @property
    def embed_size(self) -> int:
        last = [m for m in self.aligner.modules() if isinstance(m, torch.nn.Linear)][-1]
        return int(last.weight.shape[0])

    def forward(self, frames: Tensor) -> Tensor:
        return self.aligner(self.table(frames[..., 0].clamp(min=0)))  # [..., E]


def _saved_boi(path: str) -> int | None:
    """``generation_kwargs.boi_token_id`` from a local ``generation_config.json`` (not every transformers
    version restores ``generation_kwargs`` on load)."""
    import json
    import os

    file = os.path.join(str(path), "generation_config.json")
    if not os.path.exists(file):
        return None
    with open(file) as f:
        return (json.load(f).get("generation_kwargs") or {}).get("boi_token_id")
