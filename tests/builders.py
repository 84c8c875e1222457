"""Tiny random models of every adapter, built from configs (no network, no zoo weights), shared by
test_image.py, test_speech.py and test_conformance.py through the fixtures in conftest.py."""
from __future__ import annotations

import json
from pathlib import Path

import torch

# -- image: mmspec's class-conditional transformer + VQ tokenizer ------------------------------------
CLASSES = ["red ring", "blue cross", "green disk"]
N_CODES, GRID = 16, 4  # 16 codes, 4 x 4 grid (32 px / 2^3)


def tiny_meta(cfg=3.0):
    n = N_CODES
    return {"class_names": CLASSES, "class_token_ids": [n + i for i in range(len(CLASSES))],
            "null_token_id": n + len(CLASSES), "num_codes": n, "code_offset": 0, "grid_h": GRID, "grid_w": GRID,
            "image_size": 32, "default_cfg_scale": cfg, "pixel_range": [-1, 1]}


def tiny_image_models(seed=0, hidden=32, layers=2):
    from mmspec.image.models import build_transformer, build_vqvae

    torch.manual_seed(seed)
    model = build_transformer(N_CODES + len(CLASSES) + 1, hidden, layers, 2, GRID * GRID + 1)
    with torch.no_grad():  # sharpen so that greedy grids have structure (and repeats)
        model.get_output_embeddings().weight.mul_(6.0)
    vq = build_vqvae(channels=(8, 8, 8, 8), num_codes=N_CODES, embed_dim=4)
    return model.eval(), vq.eval()


def save_image_zoo(models: dict, root: Path) -> Path:
    """A zoo-format folder pair (``shapes``, ``shapes-draft``) saved from the tiny models."""
    for which, rel in (("target", "vqvae"), ("draft", "../shapes/vqvae")):
        folder = root / ("shapes" if which == "target" else "shapes-draft")
        model, vq = models[which]
        model.save_pretrained(folder / "transformer")
        if which == "target":
            vq.save_pretrained(folder / "vqvae")
        (folder / "mmspec_image.json").write_text(json.dumps(dict(tiny_meta(), vqvae=rel)))
    return root


def tiny_janus(seed=0):
    from transformers import JanusConfig, JanusForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=1,
                bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                  projection_dim=32, num_image_tokens=16, intermediate_size=64)
    vq = dict(embed_dim=8, num_embeddings=24, latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 1],
              num_res_blocks=1, num_patches=4, projection_dim=32, image_token_embed_dim=32, resolution=16)
    model = JanusForConditionalGeneration(JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                                      image_token_id=60)).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id, gen.generation_kwargs = 1, 2, 3, {"boi_token_id": 5}
    with torch.no_grad():  # sharpen the generation head so greedy grids have structure
        model.model.generation_head.vision_head.weight.mul_(8.0)
    return model


# -- speech: the zoo's codec LM + codec, and MusicGen ------------------------------------------------
K, C = 3, 16


def make_speech_folder(root: Path, *, K=K, C=C, seed=0, layers=2, sharp=8.0, codec=True, max_pos=256) -> Path:
    """A recipe-style folder: lm/ (tiny random SpeechLM), codec/ (tiny ZooCodec), mmspec_speech.json."""
    from mmspec.speech.codec import ZooCodec
    from mmspec.speech.lm import SpeechLM, SpeechLMConfig

    torch.manual_seed(seed)
    cfg = SpeechLMConfig(num_codebooks=K, codebook_size=C, num_voices=2, hidden_size=32, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=max_pos)
    model = SpeechLM(cfg).eval()
    with torch.no_grad():
        model.heads.weight.mul_(sharp)  # sharpen the random heads: structured greedy output that ends
    model.save_pretrained(root / "lm")
    meta = {"lm": "lm", "voices": ["alto", "bass"]}
    if codec:
        ZooCodec(n_filters=4, dimension=16, lstm=0, num_codebooks=K, codebook_size=C).save_pretrained(root / "codec")
        meta["codec"] = "codec"
    (root / "mmspec_speech.json").write_text(json.dumps(meta))
    return root


def tiny_musicgen(tokenizer, seed: int, layers: int = 2, K: int = 3, V: int = 32):
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)

    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=0, decoder_start_token_id=0)
    # 8 kHz, hop 8 -> 1000 frames/s; 30 kbps -> 30000 // (1000 * 10) = 3 codebooks of 32 codes
    codec = EncodecConfig(target_bandwidths=[30.0], sampling_rate=8000, audio_channels=1, num_filters=4, hidden_size=16,
                          codebook_size=V, upsampling_ratios=[4, 2], num_residual_layers=1, num_lstm_layers=1,
                          codebook_dim=16, chunk_length_s=None)
    dec = MusicgenDecoderConfig(vocab_size=V, max_position_embeddings=128, num_hidden_layers=layers, ffn_dim=32,
                                num_attention_heads=2, hidden_size=16, num_codebooks=K, pad_token_id=V, bos_token_id=V,
                                decoder_start_token_id=V)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(),
                                                            decoder=dec.to_dict())).eval()
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = V
    return model
