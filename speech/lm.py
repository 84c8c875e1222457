"""Text-to-codec-token language model with parallel codebook heads (MusicGen-style), on a Llama backbone.

Sequence layout (one row; batches LEFT-pad the text with ``TEXT_PAD`` and ``attention_mask = 0``)::

    [TEXT_BOS, VOICE_BASE + voice, c_1 .. c_n (ASCII bytes), TEXT_EOS] [BOS frame] [delayed frames ...]

* Text tokens: ids 0..127 are ASCII bytes, then ``TEXT_PAD = 128``, ``TEXT_BOS = 129``,
  ``TEXT_EOS = 130`` and one voice token per speaker, ``VOICE_BASE + v`` (see ``encode_text``).
  Text tokens are embedded by the backbone's ``embed_tokens`` (size ``text_vocab_size``).
* Audio frames ``[B, T, K]``: each codebook has ``V = codebook_size + 2`` ids: the codes
  ``0..codebook_size-1``, ``pad_id = codebook_size`` (the BOS frame and the delay padding) and
  ``eos_id = codebook_size + 1``. A frame is embedded as the SUM of its K codebook embeddings.
* Delay pattern: the codec's codes ``[B, K, T]`` get an EOS column appended (``[B, K, T + 1]``), then
  ``apply_delay`` (``speech/delay.py``) shifts codebook k right by k steps (``[B, K, T + K]``, padded with ``pad_id``). Step
  s of the LM predicts delayed column s from the BOS frame and columns < s. The model is trained on
  every delayed position (including the pads), so it emits ``pad_id`` on codebook k at steps s < k by
  itself; end of speech is ``eos_id`` on codebook 0 at step T, after which K - 1 more steps complete the
  other codebooks (codebook k emits its EOS at step T + k). ``revert_delay`` undoes the shift; only
  columns whose every codebook is committed are real codec frames.
* Output: ``logits [B, N, K, V]`` for every input position (text positions included: the position of
  the BOS frame predicts the first delayed column). ``past_key_values`` / ``use_cache`` are handed to
  ``LlamaModel`` (a ``DynamicCache``), so incremental decoding and ``DynamicCache.crop`` roll-back work.
  Roll back with a NEGATIVE count, ``cache.crop(-n_removed)`` (skip n = 0): transformers 5.24 rejects
  positive ``crop`` arguments, earlier 5.x read them as a length.
* Load with ``SpeechLM.from_pretrained(folder, dtype=torch.float32)``: the saved weights are fp16.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, PreTrainedModel

from mmspec import hf

try:  # transformers >= 5 spells it PreTrainedConfig (PretrainedConfig stays as an alias for now)
    from transformers import PreTrainedConfig as PretrainedConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig

from .delay import apply_delay, revert_delay  # noqa: F401  (moved to speech/delay.py; the recipe imports them here)

TEXT_PAD, TEXT_BOS, TEXT_EOS, VOICE_BASE = 128, 129, 130, 131


def encode_text(text: str, voice: int = 0) -> list[int]:
    """ASCII text + voice index -> text token ids ``[TEXT_BOS, voice, bytes..., TEXT_EOS]``."""
    body = [min(ord(c), 127) for c in text]
    return [TEXT_BOS, VOICE_BASE + int(voice), *body, TEXT_EOS]


class SpeechLMConfig(PretrainedConfig):
    """Sizes of the codec LM; the Llama backbone is built from the same fields."""

    model_type = "mmspec_speech_lm"

    def __init__(self, num_codebooks=4, codebook_size=512, num_voices=4, hidden_size=384,
                 num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768,
                 max_position_embeddings=1024, initializer_range=0.02, **kwargs):
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.num_voices = num_voices
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def audio_vocab_size(self) -> int:
        """V: codes + pad_id + eos_id."""
        return self.codebook_size + 2

    @property
    def pad_id(self) -> int:
        return self.codebook_size

    @property
    def eos_id(self) -> int:
        return self.codebook_size + 1

    @property
    def text_vocab_size(self) -> int:
        return VOICE_BASE + self.num_voices

    def backbone_config(self) -> LlamaConfig:
        """The ``LlamaConfig`` of the backbone; its token embedding is the text embedding."""
        return LlamaConfig(vocab_size=self.text_vocab_size, hidden_size=self.hidden_size,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=self.num_key_value_heads, intermediate_size=self.intermediate_size,
                           max_position_embeddings=self.max_position_embeddings,
                           initializer_range=self.initializer_range, pad_token_id=TEXT_PAD,
                           tie_word_embeddings=False)


# transformers renamed LlamaModel's ``past_key_values`` argument to ``cache`` within 5.x; accept both.
_CACHE_ARG = hf.cache_arg(LlamaModel)


@dataclass
class SpeechLMOutput:
    """``logits [B, N, K, V]``, the backbone's cache (a ``DynamicCache``; ``.cache`` is an alias) and its last
    hidden state ``hidden [B, N, H]`` (after the final norm: the heads' input)."""

    logits: torch.Tensor
    past_key_values: object | None = None
    hidden: torch.Tensor | None = None

    @property
    def cache(self):
        return self.past_key_values


class SpeechLM(PreTrainedModel):
    """Llama backbone + summed codebook embeddings in, K parallel heads out (``logits [B, N, K, V]``)."""

    config_class = SpeechLMConfig
    base_model_prefix = "speech_lm"
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: SpeechLMConfig):
        super().__init__(config)
        K, V, H = config.num_codebooks, config.audio_vocab_size, config.hidden_size
        self.backbone = LlamaModel(config.backbone_config())
        # One table of K * V rows: codebook k's id c lives at row k * V + c.
        self.audio_embed = nn.Embedding(K * V, H)
        self.heads = nn.Linear(H, K * V, bias=False)  # K parallel heads as one matrix
        self.post_init()

    def embed(self, text_ids: torch.Tensor | None, audio_frames: torch.Tensor | None) -> torch.Tensor:
        """``text_ids [B, L]`` and ``audio_frames [B, T, K]`` -> ``inputs_embeds [B, L + T, H]``."""
        parts = []
        if text_ids is not None:
            parts.append(self.backbone.embed_tokens(text_ids))  # [B, L, H]
        if audio_frames is not None:
            K, V = self.config.num_codebooks, self.config.audio_vocab_size
            # (offsets computed here, not kept in a buffer: from_pretrained leaves non-persistent buffers unset)
            rows = audio_frames + torch.arange(K, device=audio_frames.device) * V  # [B, T, K]
            parts.append(self.audio_embed(rows).sum(dim=2))  # [B, T, H]
        return torch.cat(parts, dim=1)

    def forward(self, text_ids=None, audio_frames=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=None, cache=None, **kwargs) -> SpeechLMOutput:
        """Text prefix and/or audio frames at the cache's position -> ``logits [B, N, K, V]``.

        ``attention_mask [B, past + N]`` (1 = real, 0 = left padding); when it is given and
        ``position_ids`` is not, positions count only real tokens, as in HF left-padded generation.
        ``past_key_values`` (or ``cache``, the newer transformers name) is extended in place.
        """
        past = past_key_values if past_key_values is not None else cache
        # 1. Embed the new positions.
        inputs_embeds = self.embed(text_ids, audio_frames)  # [B, N, H]
        N = inputs_embeds.shape[1]
        # 2. Positions that skip left padding.
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -N:]
        # 3. Backbone (handles DynamicCache creation / extension).
        out = self.backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=use_cache, **{_CACHE_ARG: past}, **kwargs)
        new_cache = out["cache"] if _CACHE_ARG == "cache" else out.past_key_values
        # 4. Parallel heads.
        B, K, V = inputs_embeds.shape[0], self.config.num_codebooks, self.config.audio_vocab_size
        logits = self.heads(out.last_hidden_state).view(B, N, K, V)  # [B, N, K, V]
        return SpeechLMOutput(logits=logits, past_key_values=new_cache if use_cache else None, hidden=out.last_hidden_state)
