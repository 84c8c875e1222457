"""Janus on the fast path against its eager forward: guided greedy image tokens per second of a randomly initialised
``JanusForConditionalGeneration`` (no Janus weights can be downloaded here; the speed of a forward does not depend on
the weights' values), built from a config whose language model has ``--hidden`` features and ``--layers`` layers and
whose VQ codebook (the generation head's outputs) holds ``--codes`` ids. One process, the two paths interleaved per
repeat, median wall time; each path's greedy tokens are checked equal.

    python benchmarks/janus_fast.py [--hidden 768] [--layers 12] [--codes 16384] [--new 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics

import torch

import mmspec
from mmspec.bench import environment
from mmspec.image.janus import JanusTarget


def random_janus(hidden: int, layers: int, codes: int, seed: int = 0):
    """A Janus of the given language-model size with random weights (a small vision tower and VQ decoder: a
    generation reads neither until it decodes the grid)."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    torch.manual_seed(seed)
    heads = max(1, hidden // 64)
    text = dict(model_type="llama", vocab_size=1024, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=1024, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=8,
                  projection_dim=64, num_image_tokens=64, intermediate_size=128)
    vq = dict(embed_dim=8, num_embeddings=codes, latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 1],
              num_res_blocks=1, num_patches=8, projection_dim=hidden, image_token_embed_dim=hidden, resolution=32)
    model = JanusForConditionalGeneration(JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                                      image_token_id=1000)).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id, gen.generation_kwargs = 1, 2, 3, {"boi_token_id": 5}
    return model


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--new", type=int, default=64, help="image tokens per generation")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    model = random_janus(args.hidden, args.layers, args.codes)
    params = sum(p.numel() for p in model.model.language_model.parameters()) / 1e6
    paths = {"fast": JanusTarget(model, guidance_scale=5.0, fast=True),
             "eager": JanusTarget(model, guidance_scale=5.0, fast=False)}
    prompt = [2] + list(range(10, 40)) + [5]  # BOS, 30 text ids, BOI
    runs = {name: (lambda t=target: mmspec.autoregressive(t, prompt, max_new_tokens=args.new))
            for name, target in paths.items()}
    return interleaved(runs, args.repeats, args.new, "image tokens",
                       f"Janus, language model {params:.0f}M parameters ({args.layers} layers x {args.hidden}), "
                       f"{args.codes} codes, guided (2 rows), {args.new} image tokens")


def interleaved(runs: dict, repeats: int, new: int, unit: str, title: str) -> int:
    """Each of ``runs`` (name -> a call returning an ``mmspec.Generation`` of ``new`` frames) once to warm up, then
    ``repeats`` rounds, interleaved; prints the title with the machine, each run's median frames per second and the
    fast / eager ratio; returns 0 if every run's frames equal the "eager" run's, else 1."""
    walls: dict[str, list[float]] = {name: [] for name in runs}
    frames = {}
    for rep in range(repeats + 1):  # the first round warms every run up
        for name, run in runs.items():
            out = run()
            frames[name] = out.tokens
            if rep:
                walls[name].append(out.wall_s)
    same = all(torch.equal(f, frames["eager"]) for f in frames.values())
    env = environment()
    print(f"{title}, float32, {cpu_name()} ({env['cpu_count']} CPUs), {torch.get_num_threads()} threads, "
          f"products: {env['fast_products']}")
    speed = {name: new / statistics.median(ts) for name, ts in walls.items()}
    for name in runs:
        print(f"  {name:13s} {speed[name]:7.1f} {unit}/s (median of {repeats})")
    print(f"  fast / eager {speed['fast'] / speed['eager']:.2f}x; identical output everywhere: {same}")
    return 0 if same else 1

if __name__ == "__main__":
    raise SystemExit(main())
