"""The text zoo's model shapes: target and drafter dims, `distill` variants, config, fp16 save."""

from __future__ import annotations

from pathlib import Path

from .data import save_tokenizer

TARGET_DIMS = dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=8)      # ~23.2M parameters
DRAFT_DIMS = dict(hidden_size=192, intermediate_size=448, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=4)       # ~2.0M parameters
QUICK_TARGET_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
QUICK_DRAFT_DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2)
# `distill` variants: LAYERSxHIDDENxFFN, 4 heads each. Two or three narrower layers keep the drafter
# inside the zoo's 0.5-2M parameter range (the 8192 x hidden embedding is most of it) and can copy from
# context (an induction head needs two layers), which code repeats a lot.
DRAFT_VARIANTS = "1x192x448,2x160x416,3x128x448"
DRAFT_PARAM_RANGE = (0.5e6, 2.0e6)


def parse_variants(spec: str, heads: int = 4) -> list[dict]:
    """``"1x192x448,2x160x416"`` -> Llama dims per drafter variant (``heads`` heads of hidden / heads)."""
    variants = []
    for item in [v.strip() for v in spec.split(",") if v.strip()]:
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"drafter variant {item!r}: expected LAYERSxHIDDENxFFN with positive integers, "
                             "for example 2x160x416")
        layers, hidden, ffn = map(int, parts)
        if hidden % heads or (hidden // heads) % 2:
            raise ValueError(f"drafter variant {item!r}: hidden {hidden} must split into {heads} heads of an "
                             "even size (RoPE)")
        variants.append({"name": item.lower(), "dims": dict(
            hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=heads, head_dim=hidden // heads)})
    if not variants:
        raise ValueError("no drafter variants given: pass --variants like 1x192x448,2x160x416")
    if len({v["name"] for v in variants}) != len(variants):
        raise ValueError(f"drafter variants repeat: {spec!r}")
    return variants


def llama_config(dims: dict, meta: dict):
    """A tied-embedding RoPE Llama config sharing the corpus tokenizer's vocabulary and specials."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=meta["vocab_size"], max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=meta["eot_id"], eos_token_id=meta["eot_id"], pad_token_id=meta["pad_id"],
        rms_norm_eps=1e-5, **dims,
    )



def save_model(model, tokenizer, folder: Path) -> None:
    """fp16 safetensors `save_pretrained` folder with generation config and tokenizer files."""
    import copy

    import torch
    from transformers import GenerationConfig

    # 1. fp16 copy on CPU (the training model keeps fp32 weights).
    half = copy.deepcopy(model).to("cpu", dtype=torch.float16)
    cfg = half.config
    half.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                              pad_token_id=cfg.pad_token_id)
    # 2. Save model (safetensors is the default format) and tokenizer next to it.
    half.save_pretrained(str(folder))
    save_tokenizer(tokenizer, folder)

