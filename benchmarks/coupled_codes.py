"""Frames per target forward (machine-independent) of coupled Jacobi drafts, proactive trees and the joint-frame
rule, on a modality's zoo at temperature 1, the same prompts and seeds for every method.

Codes per forward = committed frames / target forwards (the prefill counted), summed over every run of a
method. No wall-clock numbers: the CPU this runs on is shared; time them with ``mmspec bench`` on a quiet
machine. For the image zoo the class accuracy of the zoo classifier is reported too (all runs of a method).

    python benchmarks/coupled_codes.py --modality image --prompts 8 --seeds 2
    python benchmarks/coupled_codes.py --modality speech --prompts 4 --seeds 2 --max-new 80

A method is ``label=drafter:rule[:k[:init]]``; the defaults below are the ones BENCHMARKS.md reports.
"""
from __future__ import annotations

import argparse
import json
import time

from mmspec import methods as named
from mmspec import modalities
from mmspec.types import Sampling

DEFAULTS = {
    "image": ["autoregressive=none:speculative", "sjd=jacobi:speculative:16", "sjd above=jacobi:speculative:32:above",
              "coupled=coupled:speculative:32", "coupled above=coupled:speculative:32:above",
              "coupled-gumbel above=coupled-gumbel:speculative:32:above",
              "proactive above=proactive:speculative:32:above", "heads=heads:speculative:6",
              "lantern sjd (lossy)=jacobi:lantern:16", "lantern coupled above (lossy)=coupled:lantern:32:above"],
    "speech": ["autoregressive=none:speculative", "model=model:speculative:4", "model joint=model:joint:4",
               "jacobi=jacobi:speculative:8", "jacobi joint=jacobi:joint:8", "coupled=coupled:speculative:8",
               "coupled joint=coupled:joint:8", "heads=heads:speculative:4", "heads joint=heads:joint:4"],
}


def parse(spec: str) -> dict:
    label, _, rest = spec.partition("=")
    parts = rest.split(":")
    if len(parts) < 2:
        raise ValueError(f"method {spec!r}: want label=drafter:rule[:k[:init]]")
    return {"label": label, "drafter": parts[0], "rule": parts[1], "k": int(parts[2]) if len(parts) > 2 else 4,
            "init": parts[3] if len(parts) > 3 else "random"}


def measure(mod, target, draft, method: dict, prompts: list, seeds: int, max_new) -> dict:
    """Every prompt x seed with one method: frames, forwards and outputs."""
    frames = forwards = 0
    outputs, t0 = [], time.perf_counter()
    for prompt in prompts:
        for seed in range(seeds):
            gen = named.run(mod, target, prompt, drafter=method["drafter"], rule=method["rule"], draft=draft,
                            k=method["k"], init=method["init"], max_new_tokens=max_new, seed=seed,
                            sampling=Sampling(temperature=1.0))
            frames += int(gen.lengths.sum())
            forwards += gen.stats["steps"]
            outputs.append(gen.outputs[0])
    return {**method, "frames": frames, "forwards": forwards, "frames_per_forward": frames / forwards,
            "cpu_s": time.perf_counter() - t0, "outputs": outputs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", default="image", choices=sorted(DEFAULTS))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    mod = modalities.get(args.modality)
    target = mod.load(mod.default_target)
    specs = [parse(m) for m in (args.methods or DEFAULTS[args.modality])]
    draft = mod.load(mod.default_draft) if any(named.needs_draft(m["drafter"]) for m in specs) else None
    prompts = mod.suite.prompts(args.prompts, target)
    rows, base = [], None
    for method in specs:
        row = measure(mod, target, draft, method, prompts, args.seeds, args.max_new)
        base = base or row
        quality = None
        if mod.suite.quality is not None:
            per_prompt = [p for p in prompts for _ in range(args.seeds)]
            quality = mod.suite.quality(target, per_prompt, row["outputs"], base["outputs"])
        row.update(quality=quality, quality_name=mod.suite.quality_name)
        rows.append(row)
        print(f"{row['label']:28s} {row['frames_per_forward']:5.2f} {mod.unit}/forward  "
              f"({row['frames']} in {row['forwards']} forwards; {mod.suite.quality_name} {quality}; "
              f"{row['cpu_s']:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "outputs"} for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
