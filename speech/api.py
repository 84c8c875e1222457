"""What the CLI, the app and the benchmarks need to drive the speech modality (the modality interface).

Targets: ``zoo:NAME`` or a recipe folder (``mmspec_speech.json``) -> ``SpeechTarget``; a MusicGen
folder or hub id (``config.json`` with ``model_type == "musicgen"``) -> ``MusicgenTarget``. Outputs are
waveforms; ``save`` writes 16-bit mono WAV files with the standard library ``wave`` module.
"""
from __future__ import annotations

import argparse
import json
import os
import wave
from pathlib import Path

import torch

from mmspec.files import numbered

from .drafters import CodecLookupDrafter, lookup_init
from .relaxed import relaxed_rule
from .target import META_NAME, SpeechTarget, texts_of

DEFAULT_TARGET = "zoo:speech"
DEFAULT_DRAFT = "zoo:speech-draft"
DEFAULT_PROMPT = "Hello world"
DEFAULT_MAX_NEW = 153  # 3 s at the zoo codec's 50 frames/s, plus the K - 1 = 3 closing delay steps
INITS = {"codec-lookup": lookup_init}
DRAFTERS = {"codec-lookup": lambda target, **opts: CodecLookupDrafter()}  # training-free, per codebook
RULES = {"relaxed": lambda name, target, **opts: relaxed_rule(opts.get("beta", 0.1))}  # LOSSY on fine codebooks
LOSSLESS = {"relaxed": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speech")
    group.add_argument("--voice", default=None, help="zoo voice name or index (default: the first voice)")
    group.add_argument("--dtype", default=None, help="float32 (CPU default), float16 or bfloat16")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--guidance-scale", type=float, default=3.0, help="MusicGen classifier-free guidance")
    group.add_argument("--beta", type=float, default=0.1, help="rule 'relaxed' (LOSSY): tolerance on codebooks >= 1")


def options(args: argparse.Namespace) -> dict:
    voice = getattr(args, "voice", None)
    if isinstance(voice, str) and voice.isdigit():
        voice = int(voice)
    return {"voice": voice, "dtype": getattr(args, "dtype", None), "device": getattr(args, "device", None),
            "guidance_scale": getattr(args, "guidance_scale", 3.0), "beta": getattr(args, "beta", 0.1)}


def _is_musicgen(name: str) -> bool:
    config = Path(os.path.expanduser(name)) / "config.json"
    if config.exists():
        return json.loads(config.read_text()).get("model_type") == "musicgen"
    return "musicgen" in name.lower() and not name.startswith("zoo:")


def load(name: str, *, voice=None, dtype=None, device=None, guidance_scale: float = 3.0, beta: float = 0.1):
    """``zoo:NAME`` / recipe folder -> ``SpeechTarget``; MusicGen folder or hub id -> ``MusicgenTarget``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"speech model must be zoo:NAME, a folder or a MusicGen hub id, got {name!r}")
    if not name.startswith("zoo:") and not (Path(os.path.expanduser(name)) / META_NAME).exists() and _is_musicgen(name):
        from .musicgen import MusicgenTarget

        if voice is not None:
            raise ValueError("MusicGen has no voices; drop --voice")
        return MusicgenTarget.from_pretrained(name, guidance_scale=guidance_scale, dtype=dtype, device=device)
    return SpeechTarget.from_pretrained(name, voice=voice, dtype=dtype, device=device)


def prompts(prompt: str, batch: int, **opts) -> list[str]:
    texts_of(prompt)  # empty text -> ValueError
    return [prompt] * batch


def save(generation, out: str | None) -> list[str]:
    """One 16-bit mono WAV per row (``out``, or ``out`` numbered ``_0``, ``_1``... for a batch)."""
    if not out:
        generation.files = []
        return []
    paths = numbered(out, len(generation.outputs))
    for path, wav in zip(paths, generation.outputs):
        write_wav(path, wav, sample_rate_of(wav))
    generation.files = paths
    return paths


def describe(output) -> str:
    """One line for a waveform printed by the CLI without --out."""
    return f"<waveform: {len(output) / sample_rate_of(output):.2f} s at {sample_rate_of(output)} Hz; use --out FILE.wav>"


def json_extra(generation) -> dict:
    """Files written by ``save`` and the seconds of audio per row."""
    return {"files": list(getattr(generation, "files", [])),
            "audio_seconds": [round(seconds_of(w), 4) for w in generation.outputs]}


def seconds_of(wav) -> float:
    """Seconds of audio in a decoded waveform (the bench's real-time factor)."""
    return len(wav) / sample_rate_of(wav)


def sample_rate_of(wav) -> int:
    rate = getattr(wav, "sample_rate", None)
    if not rate:
        raise ValueError("waveform carries no sample_rate (decode it with a speech target)")
    return int(rate)


def write_wav(path: str, wav: torch.Tensor, sample_rate: int) -> None:
    """Float waveform ``[S]`` in [-1, 1] -> 16-bit PCM mono WAV."""
    pcm = (wav.detach().float().cpu().clamp(-1, 1) * 32767).round().to(torch.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.numpy().tobytes())
