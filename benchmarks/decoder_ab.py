"""The fast path's decoder stack as one C call (``FastDecoder.whole``, ``csrc/decoder.c``) against the same kernels
called layer by layer from Python, in one process: tokens/s of named methods on a modality's bench prompts, the two
paths in interleaved rounds (the first round a warm-up), median of the others. Both paths give bit-identical output.

    python benchmarks/decoder_ab.py [--modality text] [--methods "none:4,prompt-lookup|heads:16"] [--rounds 3]

``--methods``: comma-separated ``drafter:k`` (drafter names as ``mmspec generate`` takes them; ``none``: autoregressive).
"""
from __future__ import annotations

import argparse
import statistics
import time

from mmspec import methods as named
from mmspec import modalities


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", default="text", choices=["text", "image", "speech"])
    ap.add_argument("--methods", default="none:4,prompt-lookup|heads:16")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs = [(part.split(":")[0], int(part.split(":")[1])) for part in args.methods.split(",")]
    modality = modalities.get(args.modality)
    target = modality.load(modality.default_target, fast=True)
    whole = target.fast.whole
    if whole is None:
        raise SystemExit("this target's fast path has no one-call decoder here (no C kernels, or another layout)")
    prompts = modality.suite.prompts(modality.suite.n_prompts[0], target)
    new, cache, rates = modality.suite.max_new[0], {}, {}
    for round_ in range(args.rounds):
        for drafter, k in runs:
            for path, decoder in (("one call", whole), ("layered", None)):
                target.fast.whole = decoder
                t0, made = time.perf_counter(), 0
                for prompt in prompts:
                    gen = named.run(modality, target, [prompt], drafter=drafter, k=k, cache=cache, max_new_tokens=new)
                    made += int(gen.lengths.sum())
                if round_:
                    rates.setdefault((drafter, k, path), []).append(made / (time.perf_counter() - t0))
    target.fast.whole = whole
    for (drafter, k, path), values in rates.items():
        print(f"{args.modality} {drafter} k={k} {path:9s} {statistics.median(values):7.1f} tokens/s  "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
