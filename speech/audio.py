"""``Audio``: a decoded waveform and its sample rate, as one value (what speech targets' ``decode`` returns)."""
from __future__ import annotations

import wave
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono audio: ``waveform [S]`` (float32 in [-1, 1], CPU) at ``sample_rate`` Hz."""

    waveform: Tensor
    sample_rate: int

    def __post_init__(self):
        if not isinstance(self.waveform, Tensor) or self.waveform.dim() != 1:
            raise ValueError(f"waveform must be a 1-D tensor [S], got {getattr(self.waveform, 'shape', self.waveform)!r}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive integer, got {self.sample_rate!r}")

    def __eq__(self, other) -> bool:
        """Same sample rate and the same samples."""
        if not isinstance(other, Audio):
            return NotImplemented
        return self.sample_rate == other.sample_rate and torch.equal(self.waveform, other.waveform)

    __hash__ = None

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate

    def __len__(self) -> int:
        return len(self.waveform)

    def __repr__(self) -> str:
        return f"<Audio: {self.seconds:.2f} s at {self.sample_rate} Hz>"

    def numpy(self):
        return self.waveform.detach().float().cpu().numpy()

    def pcm16(self) -> Tensor:
        """The waveform as 16-bit PCM samples ``[S]`` (int16)."""
        return (self.waveform.detach().float().cpu().clamp(-1, 1) * 32767).round().to(torch.int16)

    def save(self, path: str) -> None:
        """Write a 16-bit PCM mono WAV file (the standard library's ``wave``; no extra dependency)."""
        from mmspec.files import writable

        with wave.open(writable(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.sample_rate)
            w.writeframes(self.pcm16().numpy().tobytes())
