"""How the web app shows speech: a player fed ``(sample_rate, int16 samples)``. An output is an ``Audio``
(``waveform``, ``sample_rate``) or a waveform tensor carrying a ``sample_rate`` attribute."""
from __future__ import annotations

import torch

from mmspec.modalities import Display


def player(output) -> tuple[int, "object"]:
    """``(sample_rate, int16 NumPy samples)``, what ``gr.Audio(type="numpy")`` plays."""
    wav = getattr(output, "waveform", output)
    rate = int(output.sample_rate)
    wav = torch.as_tensor(wav).detach().float().cpu().reshape(-1).clamp(-1, 1)
    return rate, (wav * 32767).round().to(torch.int16).numpy()


DISPLAY = Display(
    component="Audio", value=player, component_options={"type": "numpy"},
    methods=(("model", "auto"), ("heads", "auto"), ("codec-lookup", "auto")),
    helps={
        "heads": "an EAGLE layer on the target's own hidden state (zoo:speech-heads) guesses whole frames, "
                 "all codebooks at once, for the cost of one small layer",
        "model": "a small draft codec LM guesses whole frames: wins on ordinary sentences (2+ frames per step)",
        "jacobi": "the target refines its own guessed frames: little gain on this small model",
        "codec-lookup": "training-free, guesses each codebook from its own history: helps on steady sounds",
    },
    examples=(
        ("The quick brown fox jumps over the lazy dog.", "model",
         "a long ordinary sentence: the draft model commits over 2 frames per step"),
        ("la la la la la la la la la", "codec-lookup", "a repetitive chant: the codec history repeats"),
    ),
    init="codec-lookup",
)
