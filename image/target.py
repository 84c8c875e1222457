"""The image adapter: a Target over mmspec's LlamaGen-style class-conditional model (``image/models.py``).

The transformer is a Hugging Face ``LlamaForCausalLM`` over ``[class_token, c_1 .. c_{h*w}]`` and the
tokenizer a ``diffusers.VQModel``. Frames are single codes (K = 1) in raster order. What the adapter
adds around the model:

* **Classifier-free guidance inside the adapter**: the cache holds 2B rows (conditional rows prompted
  by the class token, unconditional rows by the null token); the returned logits are
  ``u + s * (c - u)``, optionally only inside a guidance interval of grid positions; both halves are
  rolled back together (``mmspec.hf``). ``guidance_scale == 1`` runs the conditional rows only (the unguided model).
* **Constraint by sub-vocabulary**: the logits have V = number of image codes (model ids
  ``code_offset .. code_offset + V - 1``), so every drafted, sampled or recovered token is an image code.
* **Fixed length**: ``max_frames = 1 + grid_h * grid_w``, so the loop stops at the full grid.
* **Decoding**: committed codes -> ``PIL.Image`` through the VQ decoder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mmspec import files, hf, tree
from mmspec.hf import check_guidance  # noqa: F401  (importable from here, as before)

ZOO = Path(__file__).parent / "zoo"
META_FILE = "mmspec_image.json"


def resolve(name_or_path: str) -> str:
    """``zoo:NAME`` -> ``image/zoo/NAME``; a local path must exist; anything else is returned as is (hub id)."""
    return files.resolve(name_or_path, ZOO, META_FILE, "image")


def grid_codes(frames: Tensor, lengths: Tensor, grid_tokens: int) -> Tensor:
    """Committed codes ``[B, T, 1]`` with ``lengths [B]`` -> full grids ``[B, grid_tokens]``: an unfinished
    grid (a run cut short) is padded with code 0, and nothing past a row's length (PAD) is read."""
    codes = torch.zeros(frames.shape[0], grid_tokens, dtype=torch.long, device=frames.device)
    for b in range(frames.shape[0]):
        n = min(int(lengths[b]), grid_tokens)
        codes[b, :n] = frames[b, :n, 0].clamp(min=0)
    return codes


class ImageTarget(hf.HiddenStates, hf.HFTarget):
    """Target over a class-conditional image-token transformer with CFG. See the module docstring.

    ``ImageTarget.from_pretrained("zoo:shapes", guidance_scale=3.0)``; prompts are class names
    (``"red ring"``) or lists of them.
    """

    per_row_commits = True  # rows commit their own counts: the mask holds their holes (mmspec.hf.KVCache)
    selects_rows = True  # select_rows keeps both guidance halves of the rows still running

    num_codebooks = 1

    def __init__(self, model, vqvae, meta: dict, *, guidance_scale: float | None = None,
                 guidance_interval: tuple[float, float] | None = None, image_size: int | None = None,
                 path: str = "", device: str | torch.device | None = None, fast: bool | None = None):
        self.model = model.eval()
        self.vqvae = vqvae.eval() if vqvae is not None else None
        self.meta, self.path = meta, path
        self.device = hf.resolve_device(device) if device is not None else next(model.parameters()).device
        # 1. layout: codes, class tokens, null token, grid
        self.class_names = [" ".join(str(c).lower().split()) for c in meta["class_names"]]
        self.class_ids = list(meta["class_token_ids"])
        self.null_id = int(meta["null_token_id"])
        self.code_offset = int(meta.get("code_offset", 0))
        self.vocab_size = int(meta["num_codes"])  # V: image codes only (the constraint)
        self.grid_h, self.grid_w = int(meta["grid_h"]), int(meta["grid_w"])
        self.grid_tokens = self.grid_h * self.grid_w
        self.max_frames = 1 + self.grid_tokens  # [class] + grid: generation stops at the full grid
        self.image_size = int(meta.get("image_size", 0))
        if image_size is not None and image_size != self.image_size:
            raise ValueError(f"this model makes {self.image_size}x{self.image_size} images "
                             f"({self.grid_h}x{self.grid_w} codes); got image size {image_size}")
        self._check_layout()
        # 2. guidance (the folder's saved default: ``default_cfg_scale`` in its meta file)
        default = float(meta.get("default_cfg_scale", 1.0))
        self.guidance = hf.Guidance.of(default if guidance_scale is None else guidance_scale, guidance_interval)
        self.guidance_scale, self.guidance_interval = self.guidance.scale, self.guidance.interval
        self._cache_arg = hf.cache_arg(model)
        self.pos = torch.zeros(1, dtype=torch.long)
        # 3. the fast path (mmspec.fast); its head holds the code rows only
        self.fast = hf.fast_decoder(model.base_model, fast, type(self).__name__)
        if self.fast is not None:
            self._embed = model.get_input_embeddings()
            self._head = hf.fast_head(model.get_output_embeddings(), self.code_offset, self.vocab_size)

    def _check_layout(self) -> None:
        """Refuse a model whose vocabulary, context or VQ grid does not match the layout."""
        n_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        top = max(self.code_offset + self.vocab_size, self.null_id + 1, max(self.class_ids) + 1)
        if n_vocab < top:
            raise ValueError(f"model vocabulary has {n_vocab} ids; the image layout needs {top}")
        ctx = getattr(self.model.config, "max_position_embeddings", None)
        if ctx is not None and ctx < self.max_frames:
            raise ValueError(f"model context {ctx} is shorter than 1 + {self.grid_h}x{self.grid_w} grid tokens")
        if self.vqvae is not None:
            n_codes = self.vqvae.quantize.embedding.weight.shape[0]
            factor = 2 ** (len(self.vqvae.config.block_out_channels) - 1)
            if n_codes != self.vocab_size or self.image_size // factor != self.grid_h or self.grid_h != self.grid_w:
                raise ValueError(f"VQ tokenizer ({n_codes} codes, {self.image_size}/{factor} grid) does not match the "
                                 f"layout ({self.vocab_size} codes, {self.grid_h}x{self.grid_w} grid)")

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, guidance_scale: float | None = None, guidance_interval=None,
                        image_size: int | None = None, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, fast: bool | None = None) -> "ImageTarget":
        """Load a zoo folder (``mmspec_image.json`` + ``transformer/`` + ``vqvae/``) by path or ``zoo:NAME``.

        ``device`` / ``dtype``: ``mmspec.hf``'s policy ("auto" = the policy's default here: the zoo loader
        casts). The meta file and a Llama ``transformer/config.json`` are checked before anything is built.
        ``fast``: the static-cache forward on prepacked weights (``mmspec.fast``; None = on for a CPU).
        """
        from .models import load_zoo

        path = resolve(name_or_path)
        if not os.path.exists(os.path.join(path, META_FILE)):
            raise ValueError(f"{name_or_path!r} is not an mmspec image model folder (no {META_FILE})")
        hf.check_model_type(os.path.join(path, "transformer"), ("llama",), "an mmspec image transformer")
        device = hf.resolve_device(device)
        dtype = hf.resolve_dtype(dtype, device)
        zoo = load_zoo(path, device=device, dtype=hf.resolve_dtype(None, device) if dtype == "auto" else dtype)
        return cls(zoo.transformer, zoo.vqvae, zoo.meta, guidance_scale=guidance_scale,
                   guidance_interval=guidance_interval, image_size=image_size, path=path, device=device, fast=fast)

    # -- prompts ---------------------------------------------------------------------------------
    @property
    def guided(self) -> bool:
        return self.guidance.on

    def encode(self, prompt: str | Sequence[str]) -> Tensor:
        """Class name(s) -> class token ids ``[B]``; ValueError listing the allowed names otherwise."""
        names = hf.prompt_texts(prompt, "prompt (a class name or a list of class names)")
        ids = []
        for name in names:
            key = " ".join(str(name).lower().split())
            if key not in self.class_names:
                raise ValueError(f"unknown class {name!r}; allowed: {', '.join(self.class_names)}")
            ids.append(self.class_ids[self.class_names.index(key)])
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # -- Target protocol -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, prompt: str | Sequence[str], max_new_tokens: int) -> Tensor:
        ids = self.encode(prompt)  # [B]
        self.prompt, self.B = prompt, ids.shape[0]
        # 1. conditional rows, then unconditional rows prompted by the null class
        if self.guided:
            ids = torch.cat([ids, torch.full_like(ids, self.null_id)])  # [2B]
        kv = "new" if self.fast is None else self.fast.new_cache(ids.shape[0], self.max_frames + 64)
        self.cache = hf.KVCache(kv=kv)  # no padding: every prompt is one class token
        self.pos = torch.zeros(self.B, dtype=torch.long, device=self.device)
        return self._run(ids[:, None])  # [B, 1, 1, V]

    def select_rows(self, index: Tensor) -> None:
        """Keep the batch rows at ``index [B']`` (``mmspec.hf.HFTarget.select_rows``: both guidance halves)."""
        super().select_rows(index)
        self.B = int(index.shape[0])
        if isinstance(self.prompt, (list, tuple)):
            self.prompt = [self.prompt[i] for i in index.tolist()]

    def prompt_frames(self) -> list[Tensor]:
        """No prompt frames in code space (the class token is not an image code): per row ``[0, 1]``."""
        return [torch.zeros(0, 1, dtype=torch.long, device=self.device) for _ in range(self.B)]

    @torch.inference_mode()
    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        ids = frames[..., 0] + self.code_offset  # [B, T] model ids
        if self.guided:
            ids = torch.cat([ids, ids])  # [2B, T] the same codes feed both halves
        return self._run(ids, parents)  # [B, T, 1, V]

    def _run(self, ids: Tensor, parents: Tensor | None = None) -> Tensor:
        """Model forward over ``ids [B or 2B, T]`` at ``pos`` (a token tree with ``parents [T] or [B, T]``);
        guided code logits ``[B, T, 1, V]``; pos += T."""
        T = ids.shape[1]
        step = torch.arange(T, device=self.device)[None, :]  # [1, T] frames after pos (a tree: depth - 1)
        if parents is not None:
            step = tree.depths(hf.rows_of(parents, self.B)) - 1  # [B, T]
        logits = self._model(ids, parents)  # [B|2B, T, V] code logits
        # 2. guide only where the predicted grid index (= position) lies inside the interval
        index = self.pos[:, None] + step  # [B, T] grid index predicted at each input (rows move apart)
        logits = self.guidance.mix(logits, self.B, index, self.grid_tokens)  # [B, T, V]
        self.pos = self.pos + T
        return logits[:, :, None, :]  # [B, T, 1, V]

    def _model(self, ids: Tensor, parents: Tensor | None) -> Tensor:
        """The transformer over ``ids [R, T]`` at ``pos`` (each half of a guided batch at the same positions; a
        tree: each node sees its ancestors at pos + depth - 1): float code logits ``[R, T, V]``."""
        T, rows = ids.shape[1], self.pos.repeat(ids.shape[0] // self.B)  # [R]
        if self.fast is not None:
            mask, positions = self.cache.lean_inputs(T, rows, parents, self.fast.dtype)
            self.cache.grow(T)
            hidden = self.fast(self._embed(ids), positions, mask, self.cache.kv)  # [R, T, H]
            if self.hidden_wanted:
                self._hidden = hidden[: self.B]
            return self._head(hidden).float()
        kwargs = {self._cache_arg: self.cache.kv}
        if parents is not None or self.cache.mask is not None:  # a tree, or holes of rows that committed fewer
            kwargs["attention_mask"], kwargs["position_ids"] = self.cache.inputs(T, rows, parents, self.model.dtype)
            self.cache.grow(T)
        out = self.model(input_ids=ids, use_cache=True, output_hidden_states=self.hidden_wanted, **kwargs)
        self._record_hidden(out, T, rows=self.B)  # a self-drafter reads the conditional half (see output_head)
        return out.logits[..., self.code_offset: self.code_offset + self.vocab_size].float()

    def finished(self, frames: Tensor) -> Tensor:
        """Images end at the full grid (``max_frames``), never at a token."""
        return torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)

    @torch.inference_mode()
    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        """Committed codes ``[B, T, 1]`` -> one ``PIL.Image`` per row (an unfinished grid is padded with code 0)."""
        from PIL import Image

        from .models import decode_codes, to_uint8

        if self.vqvae is None:
            raise ValueError("this image model has no VQ decoder (a draft-only folder); decode with the target")
        codes = grid_codes(frames.to(self.device), lengths, self.grid_tokens)  # [B, h * w]
        images = decode_codes(self.vqvae, codes.view(-1, self.grid_h, self.grid_w))  # [B, 3, H, W]
        return [Image.fromarray(a.numpy()) for a in to_uint8(images)]

    # -- pairing ---------------------------------------------------------------------------------
    def check_draft(self, draft) -> None:
        """A draft must share the code vocabulary, the classes and the grid (it predicts the same tokens)."""
        if not isinstance(draft, ImageTarget):
            raise ValueError(f"an image target needs an image draft model, got {type(draft).__name__}")
        mine = (self.vocab_size, self.code_offset, self.class_ids, self.null_id, self.grid_h, self.grid_w)
        theirs = (draft.vocab_size, draft.code_offset, draft.class_ids, draft.null_id, draft.grid_h, draft.grid_w)
        if mine != theirs:
            raise ValueError("draft image model's layout (codes, classes, grid) differs from the target's")

    # -- self-drafter capability (``mmspec.protocols.HiddenTarget``) ------------------------------
    def output_head(self) -> torch.nn.Module:
        """The code rows of the transformer's output head: hidden ``[..., H]`` -> code logits ``[..., V]``.

        Under guidance ``hidden()`` is the conditional half's state, so a self-drafter reading it guesses the
        conditional distribution, not the guided mix the rules verify with; that costs acceptance, never
        exactness (the rules accept with the target's guided logits). The unconditional half follows the
        committed codes through the same forward, so it needs nothing from the drafter."""
        return hf.Projection(self.model.get_output_embeddings(), self.code_offset, self.vocab_size)

    def input_embeddings(self) -> torch.nn.Module:
        """Code frames ``[..., 1]`` -> the transformer's input embedding of model id ``code + code_offset``."""
        return hf.FrameEmbedding(self.model.get_input_embeddings(), (self.code_offset,))

    def codebook(self) -> Tensor:
        """VQ codebook embeddings ``[V, E]`` (code i is model id ``code_offset + i``), for LANTERN."""
        if self.vqvae is None:
            raise ValueError("this image model has no VQ tokenizer")
        return self.vqvae.quantize.embedding.weight.detach().float()


def load_meta(path: str) -> dict:
    with open(os.path.join(path, META_FILE)) as f:
        return json.load(f)
