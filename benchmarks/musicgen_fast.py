"""MusicGen on the fast path against its eager forward: guided greedy decoder steps per second of a randomly
initialised ``MusicgenForConditionalGeneration`` (no MusicGen weights can be downloaded here; a forward's speed does
not depend on the weights' values) whose decoder has musicgen-small's shape by default (24 layers x 1024, 16 heads,
FFN 4096, 4 codebooks of 2048 codes), a small T5 text encoder and a tiny EnCodec (decoding audio is not timed). The
prompts are tokenized with the text zoo's tokenizer. One process, the two paths interleaved per repeat, median wall
time; each path's greedy codes are checked equal. ``--draft-layers``: also time speculative decoding with a random
draft of that many layers (acceptance of random models says nothing; this times the verify forwards).

    python benchmarks/musicgen_fast.py [--hidden 1024] [--layers 24] [--new 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import mmspec
from mmspec.speech import MusicgenTarget

from janus_fast import interleaved  # noqa: E402 (a script beside this one)

TOKENIZER = Path(__file__).resolve().parents[1] / "text" / "zoo" / "code-target"


def random_musicgen(tokenizer, hidden: int, layers: int, K: int = 4, V: int = 2048, seed: int = 0):
    """A MusicGen whose decoder has the given width and depth, random weights (a small T5 encoder, a tiny codec)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config

    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=len(tokenizer), d_model=512, d_kv=64, d_ff=1024, num_layers=2, num_heads=8,
                  pad_token_id=tokenizer.pad_token_id or 0, eos_token_id=0, decoder_start_token_id=0)
    codec = EncodecConfig(target_bandwidths=[K * math.log2(V)], sampling_rate=8000, audio_channels=1, num_filters=4,
                          hidden_size=16, codebook_size=V, upsampling_ratios=[4, 2], num_residual_layers=1,
                          num_lstm_layers=1, codebook_dim=16, chunk_length_s=None)
    dec = MusicgenDecoderConfig(vocab_size=V, max_position_embeddings=2048, num_hidden_layers=layers, ffn_dim=4 * hidden,
                                num_attention_heads=max(1, hidden // 64), hidden_size=hidden, num_codebooks=K,
                                pad_token_id=V, bos_token_id=V, decoder_start_token_id=V)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(),
                                                            decoder=dec.to_dict())).eval()
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = V
    return model


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--draft-layers", type=int, default=0)
    ap.add_argument("--new", type=int, default=64, help="decoder steps per generation")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    model = random_musicgen(tokenizer, args.hidden, args.layers)
    params = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    paths = {"fast": MusicgenTarget(model, tokenizer, guidance_scale=3.0, fast=True),
             "eager": MusicgenTarget(model, tokenizer, guidance_scale=3.0, fast=False)}
    runs = {name: (lambda t=target: mmspec.autoregressive(t, "80s pop track with bassy drums", max_new_tokens=args.new))
            for name, target in paths.items()}
    if args.draft_layers:
        from mmspec.drafters.model import ModelDrafter

        draft = random_musicgen(tokenizer, args.hidden, args.draft_layers, seed=1)
        for name, target in list(paths.items()):
            drafter = ModelDrafter(MusicgenTarget(draft, tokenizer, guidance_scale=3.0, fast=name == "fast"))
            runs[f"{name} + draft"] = (lambda t=target, d=drafter: mmspec.generate(
                t, d, "80s pop track with bassy drums", max_new_tokens=args.new, k=4))
    return interleaved(runs, args.repeats, args.new, "steps",
                       f"MusicGen, decoder {params:.0f}M parameters ({args.layers} layers x {args.hidden}), "
                       f"guided (2 rows), {args.new} steps")

if __name__ == "__main__":
    raise SystemExit(main())
