"""Class accuracy of autoregressive sampling against SJD and LANTERN on the image zoo.

    python benchmarks/image_quality.py --per-class 4

Every class of ``zoo:shapes`` gets ``--per-class`` images per method (same seeds for every method), and
the zoo's classifier scores them. SJD is exact, so its accuracy may differ from autoregressive only by
sampling noise; LANTERN is lossy and its accuracy is reported beside it.
"""
from __future__ import annotations

import argparse
import json

import mmspec
from mmspec import Sampling, accept
from mmspec.bench import class_accuracy
from mmspec.image import api


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    target = api.load("zoo:shapes")
    classes = target.class_names
    lantern = api.make_rule("lantern", target)
    methods = {
        "autoregressive": (None, accept.reproducible),
        "sjd (init random)": (lambda: mmspec.JacobiDrafter("random"), accept.speculative),
        "lantern (delta 0.1)": (lambda: mmspec.JacobiDrafter("random"), lantern),
    }
    results = {}
    for name, (make, rule) in methods.items():
        images, prompts, forwards, frames, wall = [], [], 0, 0, 0.0
        for c in classes:
            gen = mmspec.generate(target, make() if make else None, [c] * args.per_class, max_new_tokens=64,
                                  k=args.k, rule=rule, sampling=Sampling(temperature=1.0), seed=len(prompts))
            images += gen.outputs
            prompts += [c] * args.per_class
            forwards += gen.stats["steps"]
            frames += gen.tokens.shape[1]
            wall += gen.wall_s
        acc = class_accuracy(target, prompts, images, images)
        results[name] = {"class_accuracy": acc, "images": len(images), "frames_per_forward": frames / forwards,
                         "wall_s": wall}
        print(f"{name:22} class accuracy {acc:.3f} over {len(images)} images, "
              f"{frames / forwards:.2f} frames per target forward (batch {args.per_class}), {wall:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
