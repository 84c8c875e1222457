"""The offline speech zoo recipe (``python -m mmspec.speech.recipe prepare|train|evaluate|distill``).

Modules: ``data`` (espeak-ng data set, mu-law, ``prepare``), ``tensors`` (LM tensors and losses),
``train`` (codec and LM stages on ``mmspec.training``), ``distill`` (draft on the target's greedy
output), ``evaluate`` (metrics, samples through mmspec's own loop), ``card`` (model cards), ``cli``.
Audio metrics live in ``mmspec.speech.metrics``.
"""
from ..metrics import audio_stats, log_mel, si_snr
from .cli import DEFAULT_OUT, main
from .data import DEFAULT_DATA, SAMPLE_RATE, load_data, mulaw_decode, mulaw_encode, prepare, write_data
from .distill import grow_layers
from .tensors import lm_batch, lm_eval_loss, lm_tensors, steps_tensors
from .train import train_lm

__all__ = ["main", "prepare", "write_data", "load_data", "mulaw_encode", "mulaw_decode", "lm_tensors",
           "steps_tensors", "lm_batch", "lm_eval_loss", "train_lm", "grow_layers", "log_mel", "si_snr",
           "audio_stats", "SAMPLE_RATE", "DEFAULT_DATA", "DEFAULT_OUT"]
