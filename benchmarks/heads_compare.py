"""Mean frames per target forward of two heads folders on a modality's bench prompts (greedy, B = 1), each output
checked against autoregressive decoding: how a newly trained self-drafter compares with the shipped one.

    python benchmarks/heads_compare.py MODALITY HEADS_A HEADS_B K [THREADS]
    python benchmarks/heads_compare.py text zoo:code-heads zoo:code-heads-eagle1 8
"""
import sys

import torch

from mmspec.heads.store import load_heads
from mmspec.loop import autoregressive, generate
from mmspec.modalities import get


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        raise SystemExit(__doc__)
    modality, first, second, k = argv[0], argv[1], argv[2], int(argv[3])
    torch.set_num_threads(int(argv[4]) if len(argv) > 4 else 1)
    mod = get(modality)
    target = mod.load(mod.default_target)
    n, new = mod.suite.n_prompts[0], mod.suite.max_new[0]
    prompts = mod.suite.prompts(n, target)
    for folder in (first, second):
        drafter = load_heads(folder, target)
        made = forwards = 0
        same = True
        for p in prompts:
            gen = generate(target, drafter, [p], k=k, max_new_tokens=new)
            same &= torch.equal(gen.tokens, autoregressive(target, [p], max_new_tokens=new).tokens)
            made, forwards = made + int(gen.lengths.sum()), forwards + len(gen.steps)
        print(f"{folder}: {made / forwards:.3f} frames per forward over {len(prompts)} prompts, identical={same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
