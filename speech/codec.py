"""Neural audio codecs behind one small interface: waveform <-> discrete codes.

Format (what the speech adapter and the codec LM rely on):

* ``encode(wav)``: ``wav`` is a float waveform ``[B, 1, S]`` in [-1, 1] at ``sample_rate``;
  returns ``LongTensor [B, K, T]`` with ``K = num_codebooks`` residual codebooks (k = 0 is the
  coarsest) and ``T = ceil(S / hop_length)`` frames at ``frame_rate`` Hz; every code is in
  ``[0, codebook_size)``.
* ``decode(codes)``: ``[B, K, T]`` -> waveform ``[B, 1, T * hop_length]``.

Two implementations, both thin wrappers around the ``encodec`` package's own ``EncodecModel`` (so a
real EnCodec and the offline zoo codec load and run through the same code):

* ``EncodecCodec``: Meta's pretrained 24 kHz EnCodec via ``EncodecModel.encodec_model_24khz()``
  (its own loader; downloads the checkpoint on first use).
* ``ZooCodec``: a small EnCodec built from ``encodec.modules.SEANetEncoder/SEANetDecoder`` and
  ``encodec.quantization.ResidualVectorQuantizer`` at 16 kHz, trained by ``mmspec.speech.recipe``.
  Saved as ``config.json`` + ``model.safetensors`` (fp16) with ``save_pretrained`` /
  ``from_pretrained``.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _encodec():
    """Import the encodec package lazily, silencing its weight_norm deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import encodec  # noqa: F401
        from encodec import EncodecModel
        from encodec.modules import SEANetDecoder, SEANetEncoder
        from encodec.quantization import ResidualVectorQuantizer
    return EncodecModel, SEANetEncoder, SEANetDecoder, ResidualVectorQuantizer


class Codec(nn.Module):
    """Waveform <-> codes through a wrapped ``encodec.EncodecModel`` (single segment, no scale).

    Attributes: ``sample_rate`` (Hz), ``frame_rate`` (frames/s), ``hop_length`` (samples/frame),
    ``num_codebooks`` (K) and ``codebook_size`` (codes per codebook).
    """

    def __init__(self, model, num_codebooks: int):
        super().__init__()
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.hop_length = int(math.prod(model.encoder.ratios))
        self.frame_rate = self.sample_rate / self.hop_length
        self.codebook_size = int(model.quantizer.bins)
        self.num_codebooks = int(num_codebooks)
        # The quantizer picks its number of codebooks from a bandwidth in kbps.
        bits = math.log2(self.codebook_size)
        # (+1e-6 so that floor(bandwidth / per-codebook bandwidth) cannot round down to K - 1).
        model.bandwidth = self.num_codebooks * bits * model.frame_rate / 1000 + 1e-6

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [B, 1, S]`` -> ``codes [B, K, T]`` (long)."""
        frames = self.model.encode(wav)  # list of (codes [B, K, T], scale)
        if len(frames) != 1 or frames[0][1] is not None:
            raise ValueError("only single-segment codecs without normalisation are supported")
        return frames[0][0]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, K, T]`` -> ``wav [B, 1, T * hop_length]``."""
        return self.model.decode([(codes.long(), None)])


class EncodecCodec(Codec):
    """Meta's pretrained causal 24 kHz EnCodec at 1.5 / 3 / 6 / 12 / 24 kbps (2 / 4 / 8 / 16 / 32 codebooks)."""

    @classmethod
    def from_pretrained(cls, num_codebooks: int = 8, repository: str | None = None) -> "EncodecCodec":
        """Load through encodec's own loader (downloads unless ``repository`` holds the checkpoint)."""
        EncodecModel = _encodec()[0]
        repo = Path(repository) if repository else None
        model = EncodecModel.encodec_model_24khz(pretrained=True, repository=repo)
        return cls(model.eval(), num_codebooks)


class ZooCodec(Codec):
    """The offline zoo codec: a small 16 kHz EnCodec (about 2.7M parameters with the defaults)."""

    DEFAULTS = dict(sample_rate=16000, n_filters=16, dimension=64, ratios=[8, 5, 4, 2], lstm=1,
                    num_codebooks=4, codebook_size=512, causal=True, norm="weight_norm")

    def __init__(self, **config):
        EncodecModel, SEANetEncoder, SEANetDecoder, RVQ = _encodec()
        cfg = {**self.DEFAULTS, **config}
        # 1. Encoder / decoder / residual VQ from the encodec package's own modules.
        common = dict(channels=1, dimension=cfg["dimension"], n_filters=cfg["n_filters"],
                      ratios=list(cfg["ratios"]), lstm=cfg["lstm"], causal=cfg["causal"], norm=cfg["norm"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder, decoder = SEANetEncoder(**common), SEANetDecoder(**common)
        quantizer = RVQ(dimension=cfg["dimension"], n_q=cfg["num_codebooks"], bins=cfg["codebook_size"])
        # 2. The bandwidth that selects all K codebooks.
        frame_rate = math.ceil(cfg["sample_rate"] / math.prod(cfg["ratios"]))
        bandwidth = cfg["num_codebooks"] * math.log2(cfg["codebook_size"]) * frame_rate / 1000
        model = EncodecModel(encoder, decoder, quantizer, [bandwidth], cfg["sample_rate"], 1,
                             normalize=False, segment=None, name="mmspec_zoo_codec")
        super().__init__(model, cfg["num_codebooks"])
        self.config = cfg

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write ``config.json`` and ``model.safetensors`` (floating tensors cast to ``dtype``)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
                 for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        cfg = {**self.config, "frame_rate": self.frame_rate, "hop_length": self.hop_length,
               "codec": "encodec.EncodecModel"}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ZooCodec":
        """Rebuild from ``config.json`` and load the (fp16) weights into fp32 modules, eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        cfg = {k: v for k, v in cfg.items() if k in cls.DEFAULTS}
        codec = cls(**cfg)
        codec.model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return codec.to(device).eval()
