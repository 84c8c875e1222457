"""MusicGen (Hugging Face ``MusicgenForConditionalGeneration``) as a Target: text -> EnCodec codes -> audio.

Frames are MusicGen's decoder steps in its own DELAY-PATTERN layout: step s holds, for codebook k, the
code of audio frame s - k. The decoder predicts ``V_dec`` codes per codebook; the delay padding id
(``pad_token_id`` = ``decoder_start_token_id`` = ``V_dec``) is not one of them, so this adapter exposes
``vocab_size = V_dec + 1`` and forces the pad id by constraining the logits (pad only at delayed
positions, never elsewhere), exactly where ``generate`` overwrites predictions with its delay mask:

* codebook k at step s < k: pad (not started yet);
* codebook k at step s >= N - K + 1 + k: pad (the closing delay), N = the new steps asked for.

MusicGen has no end-of-audio token in generation: like ``generate(max_new_tokens=N)``, a row runs for N
steps and yields N - K + 1 audio frames (``finished`` is always False; the loop stops at N).

Classifier-free guidance as ``generate`` does it: the text encoder's states are doubled with a zero
("null") half and a zero attention mask; the decoder runs 2B rows in one cache, and the logits are
``uncond + guidance_scale * (cond - uncond)`` (float32), rolled back together; the default scale is the
model's own ``generation_config.guidance_scale`` (3.0 if it has none). Rollback crops the decoder's
self-attention cache through its public ``crop(-n)`` (the cross-attention cache is fixed; ``mmspec.hf``). On a CPU
the decoder runs on the fast path by default (``speech.musicgen_fast``: a static self-attention cache rolled back by
its length, the encoder's keys and values computed once, prepacked products).
A token tree runs in one forward: a 4-D self-attention mask, positions by depth (through the decoder's
input embeddings: it takes no position ids) and the delay constraint at step first + depth - 1.
The codebooks of one step come from K parallel heads over one hidden state, so per-codebook acceptance
is exact (see ``speech/target.py``). ``decode`` reverts the delay (``speech/delay.py``) and decodes only
complete frames with the model's own ``audio_encoder`` (EnCodec).

Self-drafters (``mmspec.protocols.HiddenTarget``): ``hidden()`` is the decoder's final-norm state of the
conditional rows, read through the K ``lm_heads`` (``output_head``) and fed frames embedded as the decoder
embeds them, the sum of its K codebook tables (``input_embeddings``).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from mmspec import hf, tree

from . import delay
from .audio import Audio
from .target import texts_of

DEFAULT_GUIDANCE = 3.0  # when the model's generation config names no guidance scale


class MusicgenTarget(hf.HiddenStates, hf.HFTarget):
    """Target over a mono ``MusicgenForConditionalGeneration`` and its tokenizer (or processor).

    ``guidance_scale=None``: the model's own ``generation_config.guidance_scale`` (3.0 if it has none).
    """

    def __init__(self, model, tokenizer, *, guidance_scale: float | None = None,
                 device: str | torch.device | None = None, fast: bool | None = None):
        dec = model.decoder.config
        if getattr(dec, "audio_channels", 1) != 1:
            raise ValueError("only mono MusicGen models are supported (audio_channels == 1)")
        if guidance_scale is None:
            saved = getattr(model.generation_config, "guidance_scale", None)
            guidance_scale = DEFAULT_GUIDANCE if saved is None else saved
        self.model = model.eval()
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # AutoProcessor wraps the T5 tokenizer
        self.guidance = hf.Guidance.of(guidance_scale, above_one=True)  # generate() guides only above 1
        self.guidance_scale, self.guided = self.guidance.scale, self.guidance.on
        self.device = hf.resolve_device(device) if device is not None else next(model.parameters()).device
        self.num_codebooks = int(model.decoder.num_codebooks)
        self.pad_id = int(model.generation_config.decoder_start_token_id
                          if model.generation_config.decoder_start_token_id is not None else dec.pad_token_id)
        self.codes_size = int(dec.vocab_size)
        if self.pad_id != self.codes_size:
            raise ValueError(f"expected the delay pad id to be vocab_size ({self.codes_size}), got {self.pad_id}")
        self.vocab_size = self.codes_size + 1
        self.max_frames = int(dec.max_position_embeddings)
        self.sample_rate = int(model.config.audio_encoder.sampling_rate)
        self._cache_arg = hf.cache_arg(model)
        from .musicgen_fast import FastMusicgen, why_not

        self.fast = hf.fast_decoder(model, fast, type(self).__name__, why_not=why_not, build=FastMusicgen)
        self.pos = torch.zeros(1, dtype=torch.long)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, guidance_scale: float | None = None, dtype=None,
                        device: str | torch.device | None = None, fast: bool | None = None) -> "MusicgenTarget":
        """Load model and processor/tokenizer by hub id (``facebook/musicgen-small``) or local folder; its
        ``config.json`` must say ``model_type: musicgen`` (checked before anything is built).
        ``device`` / ``dtype``: ``mmspec.hf``'s policy; ``guidance_scale=None``: the model's own. ``fast``: the decoder's
        static-cache forward on prepacked weights (``speech.musicgen_fast``; None = on for a CPU)."""
        from transformers import AutoProcessor, AutoTokenizer, MusicgenForConditionalGeneration

        hf.check_fast(fast)
        device = hf.resolve_device(device)
        dtype = hf.resolve_dtype(dtype, device)
        path = os.path.expanduser(str(name_or_path))
        hf.check_model_type(path, ("musicgen",), "a MusicGen model")
        try:
            model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
            try:
                tokenizer = AutoProcessor.from_pretrained(path)
            except (OSError, ValueError, TypeError):
                tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, EnvironmentError) as err:
            raise ValueError(f"could not load MusicGen {name_or_path!r}: {str(err).splitlines()[0]}") from err
        return cls(model, tokenizer, guidance_scale=guidance_scale, device=device, fast=fast)

    # -- Target protocol -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, prompt: str | Sequence[str], max_new_tokens: int) -> Tensor:
        texts = texts_of(prompt)
        self.prompt = prompt
        # 1. Text encoder once; CFG appends a zero "null" condition with a zero attention mask.
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        hidden = self.model.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"]
        if self.guided:
            hidden = torch.cat([hidden, torch.zeros_like(hidden)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        self.encoded, self.enc_mask = hidden, mask  # [R, L, H], [R, L] with R = B or 2B rows
        # 2. Length: N new steps (N - K + 1 audio frames), as generate(max_new_tokens=N).
        B = len(texts)
        self.new_steps = min(int(max_new_tokens), self.max_frames - 1)
        if self.fast is None:
            self.cache = hf.KVCache(kv=None)  # the model makes its encoder-decoder cache on the first forward
        else:  # the encoder's keys and values once; slots for BOS, the steps and a verify's frames
            self.fast.encode(hidden, mask)
            self.cache = hf.KVCache(kv=self.fast.new_cache(hidden.shape[0], self.new_steps + 1 + 64))
        self.pos = torch.zeros(B, dtype=torch.long, device=self.device)
        bos = torch.full((B, 1, self.num_codebooks), self.pad_id, dtype=torch.long, device=self.device)
        self._bos = bos[0, 0]
        return self.forward(bos)  # [B, 1, K, V] predicts step 0

    def prompt_frames(self) -> list[Tensor]:
        return [self._bos[None].clone() for _ in range(int(self.pos.shape[0]))]  # per row the BOS frame [1, K]

    @torch.inference_mode()
    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        B, T, K = frames.shape
        # 1. Decoder ids [R * K, T] (rows major, codebooks minor), both CFG halves fed the same frames.
        ids = frames.permute(0, 2, 1).reshape(B * K, T)
        if self.guided:
            ids = ids.repeat(2, 1)
        first = self.cache.length  # decoder steps in the cache = the step the first logits predict (BOS: step 0)
        if self.fast is not None:
            pos = self.pos.repeat(ids.shape[0] // (B * K))  # [R] decoder steps in the cache
            mask, positions = self.cache.lean_inputs(T, pos, parents, self.fast.dtype)
            self.cache.grow(T)
            hidden, logits = self.fast(ids, positions, mask, self.cache.kv)  # [R, T, H], [R * K, T, V_dec]
            if self.hidden_wanted:
                self._hidden = hidden[:B]  # the conditional half
        else:
            inputs = {"decoder_input_ids": ids} if parents is None else self._tree_inputs(ids, parents)
            out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=self.encoded), attention_mask=self.enc_mask,
                             use_cache=True, output_hidden_states=self.hidden_wanted, **inputs,
                             **{self._cache_arg: self.cache.kv})
            self.cache.kv = out.cache if self._cache_arg == "cache" else out.past_key_values
            # the decoder's last state [R, T, H] (one row per batch row, not per codebook): the conditional half
            self._record_hidden(out, T, rows=B)
            logits = out.logits
        logits = logits.float()  # [R * K, T, V_dec]
        # 2. Guidance, as ClassifierFreeGuidanceLogitsProcessor: uncond + scale * (cond - uncond).
        if self.guided:
            logits = self.guidance.mix(logits, B * K)
        logits = logits.view(B, K, T, -1).permute(0, 2, 1, 3)  # [B, T, K, V_dec]
        self.pos = self.pos + T
        steps = None if parents is None else first + tree.depths(hf.rows_of(parents, B)) - 1  # [B, T]
        return self._constrain(logits, first, steps)  # [B, T, K, V_dec + 1]

    def _tree_inputs(self, ids: Tensor, parents: Tensor) -> dict:
        """Decoder inputs for a token tree over ``ids [R * K, T]``: a 4-D self-attention mask (ancestors
        only) and the embeddings at positions ``pos + depth - 1``. MusicGen's decoder takes no position
        ids: given ``inputs_embeds`` it adds the one sinusoid of its cache length to every frame, so the
        embeddings carry the difference (``check_tree`` in the conformance suite holds it to a chain's)."""
        decoder = self.model.decoder.model.decoder
        R, T = ids.shape[0] // self.num_codebooks, ids.shape[1]
        codes = ids.view(R, self.num_codebooks, T)
        embeds = self.input_embeddings()(codes.transpose(1, 2))  # [R, T, H]
        pos = self.pos.repeat(R // self.pos.shape[0])  # [R] decoder steps in the cache
        mask, positions = self.cache.tree(parents, pos, embeds.dtype)  # [R, 1, T, S + T], [R, T]
        table = decoder.embed_positions.weights
        if int(positions.max()) >= table.shape[0]:
            raise ValueError(f"a tree reaching position {int(positions.max())} exceeds MusicGen's {table.shape[0]} positions")
        shift = table[positions] - table[self.cache.length]  # [R, T, H]
        return {"decoder_inputs_embeds": embeds + shift.to(embeds.dtype), "decoder_attention_mask": mask}

    def finished(self, frames: Tensor) -> Tensor:
        return torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)  # fixed length N

    @torch.inference_mode()
    def decode(self, frames: Tensor, lengths: Tensor) -> list[Audio]:
        """Committed steps -> per row an ``Audio`` (waveform ``[S]``, float32, CPU)."""
        out = []
        for codes in self.codes(frames, lengths):
            if codes.shape[1] == 0:
                wav = torch.zeros(0)
            else:
                audio = self.model.audio_encoder.decode(codes[None, None].to(self.device), audio_scales=[None])
                wav = audio.audio_values[0, 0].float().cpu()  # [S]
            out.append(Audio(wav, self.sample_rate))
        return out

    def codes(self, frames: Tensor, lengths: Tensor) -> list[Tensor]:
        """Revert the delay: per row the codes ``[K, T_b]`` of frames whose every codebook is committed."""
        ends = [self.new_steps - self.num_codebooks + 1] * frames.shape[0]  # N - K + 1 audio frames per row
        return delay.committed_codes(frames, lengths, ends, self.codes_size)

    def _constrain(self, logits: Tensor, first_step: int, steps: Tensor | None = None) -> Tensor:
        """``[B, T, K, V_dec]`` -> ``[B, T, K, V_dec + 1]``: the pad column only (and alone) where delayed.
        The frames predict steps first_step.. (a tree: ``steps [B, T]``, first_step + depth - 1)."""
        B, T, K, _ = logits.shape
        end = self.new_steps - K + 1
        if steps is None:
            waiting, closing, closed = delay.phases(first_step, T, K, end, logits.device)  # [T, K]
        else:
            waiting, closing, closed = delay.phases_at(steps, K, end)  # [B, T, K]
        delayed = (waiting | closing | closed).expand(B, T, K)  # not started, or past the last audio frame
        pad_col = torch.where(delayed, 0.0, float("-inf"))[..., None]  # [B, T, K, 1]
        codes = logits.masked_fill(delayed[..., None], float("-inf"))
        return torch.cat([codes, pad_col.to(logits.dtype)], dim=-1)

    # -- self-drafter capability (``mmspec.protocols.HiddenTarget``) ------------------------------
    def output_head(self) -> torch.nn.Module:
        """The K ``lm_heads`` as one map: hidden ``[..., H]`` -> ``[..., K * V]`` (codebook k's logits at ``k * V``,
        ``V = vocab_size``), the forward's logits before guidance and the delay constraint; the pad column,
        which no head predicts (the constraint forces it), is the lowest finite logit (``CodebookHeads``).

        Under guidance ``hidden()`` is the conditional rows' state, so a self-drafter guesses the conditional
        distribution, not the guided mix ``u + s * (c - u)``, and never guesses a delay pad; both cost
        acceptance, never exactness: the rules verify every draft with the target's guided, constrained
        logits. The unconditional rows are fed the same committed frames by the same forward and keep their
        cache, so they need nothing from the drafter."""
        return CodebookHeads(self.model.decoder.lm_heads)

    def input_embeddings(self) -> torch.nn.Module:
        """Frames ``[..., K]`` -> ``[..., H]``: the sum of the decoder's K codebook tables (the pad id has its own
        row), as the decoder embeds a frame before it adds the position."""
        return CodebookEmbedding(self.model.decoder.model.decoder.embed_tokens)

    # -- pairing ---------------------------------------------------------------------------------
    def check_draft(self, draft) -> None:
        """A MusicGen draft (e.g. musicgen-small for musicgen-medium) must share codec and tokenizer."""
        if not isinstance(draft, MusicgenTarget):
            raise ValueError(f"a MusicGen target needs a MusicGen draft model, got {type(draft).__name__}")
        if (draft.vocab_size, draft.num_codebooks, draft.sample_rate) != (self.vocab_size, self.num_codebooks,
                                                                          self.sample_rate):
            raise ValueError("draft MusicGen uses a different codec (codebooks, codes or sample rate)")


class CodebookHeads(torch.nn.Module):
    """MusicGen's frozen K output heads as one map (an ``mmspec.protocols.OutputHead``): hidden ``[..., H]`` ->
    ``[..., K * (V_dec + 1)]``, codebook major (``view(..., K, V_dec + 1)`` gives codebook k's logits), each
    head's ``V_dec`` code logits then the delay pad's column. No head predicts the pad id (the adapter's
    constraint forces it where delayed), so its column is the dtype's lowest finite value: probability 0,
    yet log-softmax and KL stay finite. Not one linear map (``as_linear`` is None: the pad column), so a
    drafter reads it as it is; the heads' weights stacked identify it."""

    def __init__(self, heads: torch.nn.ModuleList):
        super().__init__()
        self.heads = heads

    @property
    def hidden_size(self) -> int:
        return int(self.heads[0].weight.shape[1])

    def identity(self) -> Tensor:
        return torch.cat([head.weight for head in self.heads])  # [K * V_dec, H] (a copy)

    def as_linear(self) -> None:
        return None

    def forward(self, hidden: Tensor) -> Tensor:
        logits = torch.stack([head(hidden) for head in self.heads], dim=-2)  # [..., K, V_dec]
        pad = logits.new_full((*logits.shape[:-1], 1), torch.finfo(logits.dtype).min)  # [..., K, 1]
        return torch.cat([logits, pad], dim=-1).flatten(-2)  # [..., K * (V_dec + 1)]


class CodebookEmbedding(torch.nn.Module):
    """MusicGen's frozen frame embedding (an ``mmspec.protocols.FrameEmbedder``): frames ``[..., K]`` ->
    ``sum_k tables[k](frame[k])`` ``[..., H]`` (ids ``0 .. V_dec``, the pad id included; a negative id reads
    row 0)."""

    def __init__(self, tables: torch.nn.ModuleList):
        super().__init__()
        self.tables = tables

    @property
    def embed_size(self) -> int:
        return int(self.tables[0].weight.shape[1])

    def forward(self, frames: Tensor) -> Tensor:
        frames = frames.clamp(min=0)
        return sum(table(frames[..., k]) for k, table in enumerate(self.tables))  # [..., H]
