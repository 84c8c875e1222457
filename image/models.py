"""Model construction and loading for the offline image zoo ("shapes").

Zoo format (what ``mmspec zoo train image`` writes and what image adapters read)::

    <zoo>/shapes/
        transformer/        HF ``LlamaForCausalLM`` folder (fp16 safetensors): the target
        vqvae/              ``diffusers.VQModel.save_pretrained`` folder (fp16 safetensors)
        classifier/         ``model.safetensors`` + ``config.json``: tiny CNN scoring generated images
        mmspec_image.json   layout (below)
        README.md           model card written by ``evaluate`` (samples.png next to it)
    <zoo>/shapes-draft/
        transformer/        small ``LlamaForCausalLM``, same vocabulary and layout: the drafter
        mmspec_image.json   same layout; ``"vqvae": "../shapes/vqvae"``

Token layout (``mmspec_image.json``)::

    ids 0 .. num_codes - 1                      VQ codes (code id == token id, ``code_offset`` 0)
    ids num_codes .. num_codes + C - 1          class tokens, in ``class_names`` order
    id  num_codes + C                           null class (unconditional branch of CFG)
    sequence = [class_token, c_1 .. c_{grid_h * grid_w}]   codes in raster order, no BOS/EOS

Guided logits are ``u + s * (c - u)`` with the conditional row prompted by the class token and the
unconditional row by the null token; sampling is restricted to ids ``< num_codes``. Pixels are in
``[-1, 1]`` (``pixel_range``) in the VQ model's [B, 3, H, W] input/output. ``encode_images`` /
``decode_codes`` below are the reference round trip: codes [B, grid_h, grid_w] <-> images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from mmspec import hf

META_FILE = "mmspec_image.json"
FORMAT = "mmspec-image/1"


# ----------------------------------------------------------------------------------------- builders
def build_vqvae(channels=(32, 64, 128), num_codes: int = 512, embed_dim: int = 32, image_size: int = 32):
    """A VQModel that maps 32x32 RGB to a (32 / 2^(len(channels)-1))^2 grid of codes."""
    from diffusers import VQModel

    n = len(channels)
    return VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(channels), layers_per_block=1, latent_channels=embed_dim,
        vq_embed_dim=embed_dim, num_vq_embeddings=num_codes, sample_size=image_size,
        norm_num_groups=min(32, min(channels)),
    )


def build_transformer(vocab_size: int, hidden: int, layers: int, heads: int, seq_len: int):
    """A LlamaForCausalLM over [class, codes...]; no BOS/EOS so ``generate`` never stops early."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32 or 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max(128, seq_len), bos_token_id=None, eos_token_id=None,
        pad_token_id=None, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


class ShapesClassifier(nn.Module):
    """Tiny CNN (~100k params) that names the class of a [B, 3, 32, 32] image in [-1, 1]."""

    def __init__(self, num_classes: int, channels=(32, 64, 96)):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:  # conv-bn-relu-pool: 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.config = {"num_classes": num_classes, "channels": list(channels)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, C]
        return self.head(self.features(x).mean(dim=(2, 3)))

    def save(self, path: str, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).cpu().contiguous()
                 for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"architecture": "ShapesClassifier", **self.config, **(extra or {})}, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str) -> "ShapesClassifier":
        from safetensors.torch import load_file

        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        model = cls(cfg["num_classes"], cfg["channels"])
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        model.load_state_dict(state)
        return model.eval()


# ------------------------------------------------------------------------------------ round trip
@torch.no_grad()
def encode_images(vqvae, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> codes [B, h, w] (nearest codebook entry, as VQModel does)."""
    z = vqvae.encode(images).latents  # [B, E, h, w]
    b, e, h, w = z.shape
    book = vqvae.quantize.embedding.weight  # [N, E]
    flat = z.permute(0, 2, 3, 1).reshape(-1, e).float()  # [B*h*w, E]
    return torch.cdist(flat, book.float()).argmin(dim=1).view(b, h, w)


@torch.no_grad()
def decode_codes(vqvae, codes: torch.Tensor) -> torch.Tensor:
    """Codes [B, h, w] -> images [B, 3, H, W] in [-1, 1] (clamped)."""
    b, h, w = codes.shape
    e = vqvae.quantize.embedding.weight.shape[1]
    quant = vqvae.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, e))  # [B, E, h, w]
    return vqvae.decode(quant, force_not_quantize=True).sample.clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (for PIL / sample sheets)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


# ---------------------------------------------------------------------------------------- loading
@dataclass
class ImageZoo:
    """What ``load_zoo`` returns. ``vqvae`` / ``classifier`` are None for a draft-only folder."""

    transformer: nn.Module
    meta: dict
    vqvae: nn.Module | None = None
    classifier: ShapesClassifier | None = None
    path: str = ""
    class_names: list = field(default_factory=list)

    @property
    def num_codes(self) -> int:
        return self.meta["num_codes"]

    @property
    def null_token_id(self) -> int:
        return self.meta["null_token_id"]

    def class_token_id(self, name: str) -> int:
        """Token id of a class name; ValueError listing the allowed names otherwise."""
        key = " ".join(str(name).lower().split())
        if key not in self.class_names:
            raise ValueError(f"unknown class {name!r}; allowed: {', '.join(self.class_names)}")
        return self.meta["class_token_ids"][self.class_names.index(key)]


def load_zoo(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ImageZoo:
    """Load ``<zoo>/shapes`` or ``<zoo>/shapes-draft`` with ``from_pretrained`` (eval mode)."""
    from diffusers import VQModel
    from transformers import LlamaForCausalLM

    with open(os.path.join(path, META_FILE)) as f:
        meta = json.load(f)
    # 1. the autoregressive model (target or draft)
    model = LlamaForCausalLM.from_pretrained(os.path.join(path, "transformer"))
    model = model.to(device=device, dtype=dtype).eval()
    # 2. the VQ tokenizer: own folder, or the one the draft's meta points at
    vq_dir = os.path.normpath(os.path.join(path, meta.get("vqvae", "vqvae")))
    vqvae = VQModel.from_pretrained(vq_dir, torch_dtype=dtype).to(device=device).eval() if os.path.isdir(vq_dir) else None
    # 3. the classifier, only next to the target
    cls_dir = os.path.join(path, "classifier")
    classifier = ShapesClassifier.from_pretrained(cls_dir).to(device) if os.path.isdir(cls_dir) else None
    return ImageZoo(model, meta, vqvae, classifier, path, list(meta["class_names"]))


# ---------------------------------------------------------------------------------- reference sampler

@torch.no_grad()
def guided_logits(model, class_ids: torch.Tensor, codes: torch.Tensor, null_id: int, num_codes: int,
                  cfg_scale: float) -> torch.Tensor:
    """Teacher-forced guided logits over codes: [B] classes, [B, L] codes -> [B, L, num_codes].

    Position t is the distribution of code t given the class and codes < t (u + s * (c - u)).
    """
    inp = torch.cat([class_ids[:, None], codes[:, :-1]], dim=1)  # [B, L]
    cond = model(input_ids=inp).logits[..., :num_codes].float()
    if cfg_scale == 1.0:
        return cond
    unc_inp = inp.clone()
    unc_inp[:, 0] = null_id
    uncond = model(input_ids=unc_inp).logits[..., :num_codes].float()
    return hf.guide(cond, uncond, cfg_scale)


def _with_cache(model, out, ids: torch.Tensor):
    """Next forward reusing ``out``'s KV cache (``mmspec.hf.cache_arg`` names the argument)."""
    name = hf.cache_arg(model)
    cache = out.get("cache", None) if name == "cache" else out.get("past_key_values", None)
    return model(input_ids=ids, use_cache=True, **{name: cache})


@torch.no_grad()
def sample_codes(model, class_ids: torch.Tensor, null_id: int, num_codes: int, length: int,
                 cfg_scale: float = 3.0, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain autoregressive CFG sampling with the KV cache (the reference, no speculation).

    class_ids [B] token ids -> codes [B, length]. CFG runs a doubled batch (conditional rows, then
    null-class rows); logits are restricted to codes, guided, then warped by temperature / top-k.
    """
    b = class_ids.shape[0]
    guided = cfg_scale != 1.0
    # 1. prefill the class tokens (and the null tokens for the unconditional half)
    ids = torch.cat([class_ids, torch.full_like(class_ids, null_id)]) if guided else class_ids
    out = model(input_ids=ids[:, None], use_cache=True)
    codes = []
    for t in range(length):
        # 2. guide, warp, sample one code per row
        logits = out.logits[:, -1, :num_codes].float()  # [B or 2B, N]
        if guided:
            logits = hf.guide(logits[:b], logits[b:], cfg_scale)
        if temperature <= 0:
            tok = logits.argmax(-1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < num_codes:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            tok = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        codes.append(tok)
        # 3. feed the same code to both halves
        if t + 1 < length:
            nxt = torch.cat([tok, tok]) if guided else tok
            out = _with_cache(model, out, nxt[:, None])
    return torch.stack(codes, dim=1)  # [B, length]


def classify_images(target, images: list) -> list[int] | None:
    """The zoo classifier's class index for each ``PIL.Image`` (the classifier in ``target.path``), or None
    when the target ships no classifier."""
    import numpy as np

    folder = os.path.join(getattr(target, "path", "") or "", "classifier")
    if not os.path.isdir(folder):
        return None
    classifier = ShapesClassifier.from_pretrained(folder)
    batch = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images])
    x = batch.float() / 127.5 - 1  # [B, 3, H, W] in [-1, 1], as the recipe feeds it
    with torch.no_grad():
        return classifier(x).argmax(-1).tolist()
