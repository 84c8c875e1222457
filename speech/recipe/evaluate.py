"""`evaluate`: codec metrics, LM losses, sampled utterances (through mmspec's own loop) and the model cards."""
from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import torch

from mmspec.speech.metrics import SAMPLE_RATE, audio_stats, log_mel, si_snr

from .card import write_cards
from .data import load_data
from .tensors import draft_agreement, lm_eval_loss, lm_tensors
from .train import encode_all


def write_wav(path: Path, x: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit mono WAV with the standard-library ``wave`` module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())


def evaluate_codec(codec, wavs: list[np.ndarray]) -> dict:
    """Reconstruction quality on held-out utterances: log-mel L1 distance and SI-SNR (means)."""
    mel_d, snr = [], []
    for x in wavs:
        y = codec.decode(codec.encode(torch.from_numpy(x)[None, None]))[0, 0, : len(x)].numpy()
        mel_d.append(float((log_mel(y) - log_mel(x)).abs().mean()))
        snr.append(si_snr(y, x))
    return {"utterances": len(wavs), "log_mel_l1": round(float(np.mean(mel_d)), 4),
            "si_snr_db": round(float(np.mean(snr)), 2)}


def sox_info(path: Path) -> str:
    """``sox --i`` and ``sox stat`` output when sox is installed (else a note)."""
    if shutil.which("sox") is None:
        return "sox not installed"
    info = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True).stdout
    stat = subprocess.run(["sox", str(path), "-n", "stat"], capture_output=True, text=True).stderr
    return info.strip() + "\n" + stat.strip()


def speak(model, codec, voices: list[str], text: str, voice: int, max_frames: int, top_k: int, seed: int):
    """One utterance sampled by mmspec's own loop through ``SpeechTarget`` (top-k, temperature 1) -> waveform.

    The adapter keeps the delay pattern valid and decodes only complete codec frames; ``max_frames``
    codec frames plus the closing delayed steps bound the length.
    """
    from mmspec import Sampling, accept, autoregressive

    from ..target import SpeechTarget

    target = SpeechTarget(model, codec, voices=voices, voice=voice)
    gen = autoregressive(target, text, max_new_tokens=max_frames + target.num_codebooks, seed=seed,
                         sampling=Sampling(temperature=1.0, top_k=top_k), rule=accept.speculative)
    return gen.outputs[0].numpy()  # [S]


def write_samples(args, zoo: Path, model, codec, index: dict, wavs: list, valid: list[int], meta: dict) -> list[dict]:
    """``--samples`` WAVs from held-out transcripts, one voice after another, measured next to espeak's."""
    by_voice, samples = {}, []
    for i in valid:  # the first held-out utterance of each voice, then the rest
        by_voice.setdefault(index["utterances"][i]["voice"], i)
    picks = (list(by_voice.values()) + [i for i in valid if i not in by_voice.values()])[: args.samples]
    for n, i in enumerate(picks):
        u = index["utterances"][i]
        y = speak(model, codec, [v["name"] for v in index["voices"]], u["text"], u["voice"], meta["max_frames"],
                  args.top_k, args.seed + n)
        path = zoo / "speech" / "samples" / f"sample{n}.wav"
        write_wav(path, y)
        samples.append({"file": f"samples/{path.name}", "text": u["text"],
                        "voice": index["voices"][u["voice"]]["name"], "generated": audio_stats(y),
                        "espeak_reference": audio_stats(wavs[i]), "sox": sox_info(path)})
        print(samples[-1]["text"], samples[-1]["generated"])
    return samples


def evaluate(args) -> None:
    """Codec metrics, LM validation losses, 3 sampled utterances and model cards (CPU, a few minutes)."""
    from ..codec import ZooCodec
    from ..lm import SpeechLM

    torch.manual_seed(args.seed)
    zoo = Path(args.zoo)
    index, wavs = load_data(args.data)
    valid = [i for i, u in enumerate(index["utterances"]) if u["split"] == "valid"][: args.max_valid]
    # 1. Codec reconstruction on held-out audio.
    codec = ZooCodec.from_pretrained(zoo / "speech" / "codec")
    report = {"codec": evaluate_codec(codec, [wavs[i] for i in valid])}
    print("codec", report["codec"])
    # 2. LM validation cross-entropy (codes from the shipped codec) and draft/target agreement.
    items = [index["utterances"][i] for i in valid]
    codes = encode_all(codec, [wavs[i] for i in valid], torch.device("cpu"))
    C = codec.codebook_size
    data = lm_tensors(items, codes, codec.num_codebooks, C, C + 1)
    rows = np.arange(len(items))
    lms = {r: SpeechLM.from_pretrained(zoo / f, dtype=torch.float32).eval()
           for r, f in (("target", "speech/lm"), ("draft", "speech-draft/lm"))}
    for role, m in lms.items():
        report[f"{role}_valid_ce"] = round(lm_eval_loss(m, data, rows, torch.device("cpu")), 4)
        report[f"{role}_params"] = sum(p.numel() for p in m.parameters())
    report["draft_target_top1_agreement"] = draft_agreement(lms["target"], lms["draft"], data, rows)
    print({k: v for k, v in report.items() if k != "codec"})
    # 3. Three samples from held-out transcripts (+ the espeak references, measured the same way).
    meta = json.loads((zoo / "speech" / "mmspec_speech.json").read_text())
    report["samples"] = write_samples(args, zoo, lms["target"], codec, index, wavs, valid, meta)
    (zoo / "speech" / "evaluation.json").write_text(json.dumps(report, indent=2))
    write_cards(zoo, report, meta)
