"""Audio metrics the speech package shares: log-mel spectrogram, SI-SNR and measured utterance statistics.

Used by the zoo recipe's evaluation and by ``mmspec bench`` (quality of generated speech); imports no recipe.
"""
from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000


def si_snr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant signal-to-noise ratio in dB (zero-mean signals, same length)."""
    est, ref = est - est.mean(), ref - ref.mean()
    proj = (est @ ref) / (ref @ ref + 1e-12) * ref
    return float(10 * np.log10((proj @ proj + 1e-12) / ((est - proj) @ (est - proj) + 1e-12)))


def log_mel(x: np.ndarray, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """log-mel spectrogram ``[64, frames]`` (n_fft 1024, hop 256) of a mono waveform."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sr, n_fft=1024, hop_length=256, n_mels=64)
    return torch.log(mel(torch.from_numpy(x).float()) + 1e-5)


def audio_stats(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict:
    """Measured properties: duration, RMS (dBFS), spectral flatness, voiced fraction and median F0.

    Voicing: 40 ms frames with RMS above -40 dBFS whose normalised autocorrelation peak in 60-400 Hz
    exceeds 0.5 (espeak's voiced segments are strongly periodic; noise is not).
    """
    n, hop = int(0.04 * sr), int(0.02 * sr)
    frames = [x[i: i + n] for i in range(0, len(x) - n, hop)]
    voiced, f0s, loud = 0, [], 0
    for f in frames:
        f = f - f.mean()
        if np.sqrt((f ** 2).mean()) < 0.01:
            continue
        loud += 1
        ac = np.correlate(f, f, "full")[n - 1:]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / (ac[0] + 1e-12) > 0.5:
            voiced, f0s = voiced + 1, f0s + [sr / lag]
    spec = np.abs(np.fft.rfft(x[: len(x) // n * n].reshape(-1, n) * np.hanning(n), axis=1)) ** 2 + 1e-10
    flat = float(np.mean(np.exp(np.log(spec).mean(1)) / spec.mean(1)))
    return {"duration_s": round(len(x) / sr, 2), "rms_dbfs": round(float(20 * np.log10(np.sqrt((x ** 2).mean()) + 1e-9)), 1),
            "spectral_flatness": round(flat, 4), "loud_frames": loud,
            "voiced_fraction_of_loud": round(voiced / max(1, loud), 3),
            "median_f0_hz": round(float(np.median(f0s)), 1) if f0s else None}
