"""`prepare`: the speech zoo's data set: espeak-ng utterances of stdlib docstring sentences, 8-bit mu-law.

On disk: ``audio.mulaw.xz`` (lzma'd concatenated uint8 mu-law, 16 kHz) + ``index.json`` (transcripts,
voices, a 5% validation split by transcript hash).
"""
from __future__ import annotations

import ast
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import wave
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mmspec.speech.metrics import SAMPLE_RATE
from mmspec.training import progress_bar

AUDIO_NAME = "audio.mulaw.xz"
DEFAULT_DATA = Path(".gpu/speech")  # in the working directory, never inside the installed package
# Each voice: espeak-ng voice (+variant), speed (words/min), pitch (0-99). The LM is conditioned on it.
VOICES = [
    {"name": "us_male", "espeak": "en-us", "speed": 180, "pitch": 45},
    {"name": "gb_male", "espeak": "en-gb", "speed": 170, "pitch": 40},
    {"name": "us_female", "espeak": "en-us+f3", "speed": 185, "pitch": 60},
    {"name": "gb_female", "espeak": "en-gb+f4", "speed": 175, "pitch": 55},
]
_SENTENCE = re.compile(r"^[A-Z][A-Za-z ,']+[.?!]$")


def mulaw_encode(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """float [-1, 1] -> uint8 mu-law (8 bits: about 38 dB SNR, half the size of int16)."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.round((y + 1) / 2 * mu).astype(np.uint8)


def mulaw_decode(q: np.ndarray, mu: int = 255) -> np.ndarray:
    """uint8 mu-law -> float32 [-1, 1]."""
    y = q.astype(np.float32) / mu * 2 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def stdlib_sentences() -> list[str]:
    """Clean ASCII first-class sentences (3-10 words) from docstrings of this Python's stdlib, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                tree = ast.parse(Path(dirpath, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for s in re.split(r"(?<=[.?!])\s+", " ".join((ast.get_docstring(node) or "").split())):
                    if 3 <= len(s.split()) <= 10 and 12 <= len(s) <= 64 and _SENTENCE.match(s):
                        found.add(s)
    return sorted(found)


def synthesize(text: str, voice: dict) -> np.ndarray:
    """espeak-ng -> float32 mono at 16 kHz, leading/trailing silence trimmed to 50 ms."""
    import torchaudio.functional as AF

    cmd = ["espeak-ng", "-v", voice["espeak"], "-s", str(voice["speed"]), "-p", str(voice["pitch"]),
           "--stdout", text]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(raw)) as w:
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    loud = np.flatnonzero(np.abs(x) > 0.01)
    if len(loud) == 0:
        return x[:0]
    pad = SAMPLE_RATE // 20
    return x[max(0, loud[0] - pad): loud[-1] + pad]


def split_of(text: str) -> str:
    """"valid" for about 5% of transcripts (crc32 % 20 == 0), else "train"."""
    return "valid" if zlib.crc32(text.encode()) % 20 == 0 else "train"


def prepare(args) -> None:
    """Synthesize the utterances; write ``audio.mulaw.xz`` (lzma'd uint8 mu-law) + ``index.json``."""
    # 1. Check the synthesizer.
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is missing: run `apt-get update && apt-get install -y espeak-ng`")
    out = Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    # 2. Sentences in a fixed pseudo-random order; voice i % len(VOICES).
    sentences = stdlib_sentences()
    order = np.random.default_rng(args.seed).permutation(len(sentences))
    jobs = [(sentences[j], i % len(VOICES)) for i, j in enumerate(order[: args.max_utterances])]
    # 3. Synthesize in order (threads only wait on espeak), keep 1-4 s, stop at the byte budget.
    chunks, items, total = [], [], 0  # chunks: uint8 mu-law per utterance
    bar = progress_bar("espeak-ng", total=len(jobs))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for b in range(0, len(jobs), 64):  # batches, so nothing past the budget is synthesized
            batch = jobs[b: b + 64]
            for (text, v), x in zip(batch, pool.map(lambda job: synthesize(job[0], VOICES[job[1]]), batch)):
                bar.update(1)
                if total >= args.max_seconds * SAMPLE_RATE or not (SAMPLE_RATE <= len(x) <= 4 * SAMPLE_RATE):
                    continue
                items.append({"text": text, "voice": v})
                chunks.append(mulaw_encode(x))
                total += len(x)
            if total >= args.max_seconds * SAMPLE_RATE:
                break
    bar.close()
    # 4. Deterministic 5% validation split (by transcript hash, so every voice is represented) and the files.
    source = "first sentences of Python stdlib docstrings, espeak-ng " + _espeak_version()
    write_data(out, chunks, [it["text"] for it in items], [it["voice"] for it in items], VOICES, source)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    if size > 24:
        print(f"WARNING: {size:.1f} MB exceeds the 24 MB carry budget; lower --max-seconds")
    print(f"{len(items)} utterances, {total / SAMPLE_RATE / 60:.1f} min, {size:.1f} MB in {out}")


def write_data(out: Path, mulaw: list[np.ndarray], texts: list[str], voices: list[int], voice_list: list[dict],
               source: str) -> None:
    """Write a data set: ``audio.mulaw.xz`` (lzma'd concatenated uint8 mu-law) + ``index.json``."""
    out.mkdir(parents=True, exist_ok=True)
    items, offset = [], 0
    for q, text, v in zip(mulaw, texts, voices):
        items.append({"offset": offset, "length": len(q), "text": text, "voice": int(v), "split": split_of(text)})
        offset += len(q)
    (out / AUDIO_NAME).write_bytes(lzma.compress(np.concatenate(mulaw).tobytes(), preset=9))
    index = {"sample_rate": SAMPLE_RATE, "encoding": "mulaw8", "voices": voice_list, "source": source,
             "utterances": items}
    (out / "index.json").write_text(json.dumps(index))


def _espeak_version() -> str:
    try:
        return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split()[3]
    except Exception:
        return "unknown"


def load_data(data_dir: str | Path) -> tuple[dict, list[np.ndarray]]:
    """``index.json`` and the decoded float32 waveforms (one array per utterance, 16 kHz)."""
    data_dir = Path(data_dir)
    index = json.loads((data_dir / "index.json").read_text())
    audio = mulaw_decode(np.frombuffer(lzma.decompress((data_dir / AUDIO_NAME).read_bytes()), np.uint8))
    wavs = [audio[u["offset"]: u["offset"] + u["length"]] for u in index["utterances"]]
    return index, wavs
