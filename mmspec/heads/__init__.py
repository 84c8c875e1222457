"""Self-drafters' trainable parts, their storage and their training (``mmspec heads train``).

    from mmspec.heads import load_heads, train
    train("zoo:code-target", "eagle", "out/eagle", time_budget=600)   # the CLI's stages, from Python
    drafter = load_heads("out/eagle", target)          # refuses heads trained for another target
    mmspec.generate(target, drafter, prompt, k=4)

Kinds ``eagle1`` and ``medusa1`` are the layouts vLLM and SGLang compute; ``mmspec.heads.export.export``
(``mmspec heads export``) writes them as those engines' checkpoints.
"""
from pathlib import Path

from .engine_kinds import Eagle1Layer, Medusa1Heads
from .modules import EagleLayer, MedusaHeads, eagle_for
from .store import load_heads, save_heads, target_info

__all__ = ["EagleLayer", "MedusaHeads", "Eagle1Layer", "Medusa1Heads", "eagle_for", "load_heads", "save_heads",
           "target_info", "train"]


def train(target: str, kind: str, out: str | Path, *, time_budget: float = 600.0, **options) -> Path:
    """``mmspec heads train`` from Python: ``options`` are its flags with underscores (``data``, ``device``,
    ``seq_len``, ``batch``, ``num_heads``, ``max_tokens``, ``draft_vocab``, ``seed``...). Returns ``out``."""
    from .cli import main

    argv = ["--target", str(target), "--kind", str(kind), "--out", str(out), "--time-budget", str(time_budget)]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    try:
        main(argv)
    except SystemExit as err:  # argparse refused an option: say so as the rest of the API does
        raise ValueError(f"mmspec.heads.train: bad options {options!r} (see `mmspec heads train --help`)") from err
    return Path(out)
