"""The speech adapter: a Target over the zoo's text-to-codec LM (``SpeechLM``, parallel heads, delay pattern).

Frames are the LM's model steps in the DELAY-PATTERN layout: frame s holds, for codebook k, the code of
codec frame s - k (MusicGen's delay; see ``speech/lm.py``). So ``frames [B, T, K]`` with K codebooks and
``logits [B, T, K, V]`` with ``V = codebook_size + 2`` (codes, then ``pad_id``, then ``eos_id``).

Why per-codebook acceptance is exact here: the K heads read the same hidden state, so the K codebooks of
one step are conditionally independent given the past, ``p(frame | past) = prod_k p_k(x_k | past)``.
Accepting each codebook with min(1, p_k / q_k) and resampling each rejected one from its own residual
gives an exact sample of every codebook, hence of the product, i.e. of the step; a step with any
rejected codebook changes the past of later steps, so the step ends there (``mmspec.accept.speculative``).

Constraints (applied to the logits inside the adapter, so every rule, drafter and residual sees only
valid ids). For the frame at step s, with e the step of the first EOS on codebook 0 among earlier frames:

* codebook k at s < k: ``pad_id`` only (that codebook has not started yet);
* no EOS yet (e >= s): codebook 0 may be a code or ``eos_id``; codebooks k >= 1 a code;
* after the EOS (e < s): codebook k is a code while s < e + k, ``eos_id`` at s = e + k (its own end,
  as the LM was trained) and ``pad_id`` after.

End: the row is finished at step e + K - 1, the frame whose last codebook holds its EOS (K - 1 steps
after the EOS on codebook 0, so every delayed codebook completes). ``decode`` reverts the delay and
sends the codec only codec frames t < e whose every codebook is committed (t + K - 1 < committed
steps): never drafts, delay padding or special ids. A row cut by ``max_new_tokens`` before its end
decodes its complete frames only. The delay pattern itself (apply/revert, phases, committed codes) is
``speech/delay.py``'s, shared with MusicGen.

Positions: ``pos`` counts each row's real text tokens + the BOS frame + committed steps (left padding
excluded), ``max_frames`` is the LM's ``max_position_embeddings``. Rollback crops the LM's
``DynamicCache`` with ``crop(-n)``, its mask and the fed frames together (``mmspec.hf``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mmspec import files, hf, tree

from . import delay
from .audio import Audio
from .lm import TEXT_PAD, SpeechLM, encode_text

ZOO = Path(__file__).parent / "zoo"
META_NAME = "mmspec_speech.json"


def resolve(name_or_path: str) -> Path:
    """``zoo:NAME`` -> ``speech/zoo/NAME``; otherwise a local folder holding ``mmspec_speech.json``."""
    folder = Path(files.resolve(name_or_path, ZOO, META_NAME, "speech", hub=False))
    if not (folder / META_NAME).exists():
        raise ValueError(f"speech model {str(name_or_path)!r} is not a folder with {META_NAME} (zoo:NAME or a recipe output)")
    return folder


def texts_of(prompt: str | Sequence[str]) -> list[str]:
    """A prompt (one text or a list) -> non-empty texts; empty text is a ValueError (``hf.prompt_texts``)."""
    return hf.prompt_texts(prompt, "speech prompt")


class SpeechTarget(hf.HiddenStates, hf.HFTarget):
    """Target over a ``SpeechLM``; ``codec`` (any ``speech.codec.Codec``) is only needed to decode."""

    per_row_commits = True  # rows commit their own counts: the mask holds their holes, and the delay pattern
    # reads each row's own fed steps (``_own_steps``)
    selects_rows = True  # select_rows keeps the cache, its mask and fed steps of the rows still running

    def __init__(self, model: SpeechLM, codec=None, *, voices: Sequence[str] = (), voice: int | str | None = None,
                 device: str | torch.device | None = None, fast: bool | None = None):
        config = model.config
        self.model = model.eval()
        self.codec = codec
        self.device = hf.resolve_device(device) if device is not None else next(model.parameters()).device
        self.num_codebooks = int(config.num_codebooks)
        self.codebook_size = int(config.codebook_size)
        self.vocab_size = int(config.audio_vocab_size)
        self.pad_id, self.eos_id = int(config.pad_id), int(config.eos_id)
        self.max_frames = int(config.max_position_embeddings)
        self.voices = list(voices) or [f"voice{i}" for i in range(config.num_voices)]
        self.voice = self.voice_index(voice)
        self.sample_rate = int(codec.sample_rate) if codec is not None else None
        self.pos = torch.zeros(1, dtype=torch.long)
        # the fast path (mmspec.fast) over the LM's Llama backbone; the K heads packed as one product
        self.fast = hf.fast_decoder(model.backbone, fast, type(self).__name__)
        if self.fast is not None:
            self._head = hf.fast_head(model.heads)

    def voice_index(self, voice: int | str | None) -> int:
        """A voice name or index -> index; unknown voices are a ValueError listing the known ones."""
        if voice is None:
            return 0
        if isinstance(voice, str) and voice in self.voices:
            return self.voices.index(voice)
        if isinstance(voice, int) and not isinstance(voice, bool) and 0 <= voice < len(self.voices):
            return voice
        raise ValueError(f"unknown voice {voice!r}; allowed: {', '.join(self.voices)}")

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, voice: int | str | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        load_codec: bool = True, fast: bool | None = None) -> "SpeechTarget":
        """Load a recipe folder (``mmspec_speech.json`` + ``lm/`` + the codec it names) or ``zoo:NAME``.

        ``device`` / ``dtype``: ``mmspec.hf``'s policy ("auto" = as saved, float16). The meta file and the
        LM's ``config.json`` (``model_type: mmspec_speech_lm``) are checked before anything is built.
        ``fast``: the static-cache forward on prepacked weights (``mmspec.fast``; None = on for a CPU).
        """
        from .codec import ZooCodec

        folder = resolve(name_or_path)
        meta = json.loads((folder / META_NAME).read_text())
        device = hf.resolve_device(device)
        dtype = hf.resolve_dtype(dtype, device)
        hf.check_model_type(folder / meta.get("lm", "lm"), (SpeechLM.config_class.model_type,), "an mmspec speech LM")
        model = SpeechLM.from_pretrained(folder / meta.get("lm", "lm"), dtype=dtype).to(device)
        codec = None
        if load_codec and meta.get("codec"):
            codec = ZooCodec.from_pretrained((folder / meta["codec"]).resolve(), device=device)
        return cls(model, codec, voices=meta.get("voices", ()), voice=voice, device=device, fast=fast)

    # -- prompts ---------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Text(s) -> left-padded text ids ``[B, L]`` (voice token included) and pad counts ``[B]``."""
        rows = [encode_text(t, self.voice) for t in texts_of(prompt)]
        L = max(len(r) for r in rows)
        if L + 1 >= self.max_frames:
            raise ValueError(f"prompt is {L} tokens long; the speech LM's context holds {self.max_frames}")
        return hf.left_pad(rows, TEXT_PAD, self.device)

    # -- Target protocol -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, prompt: str | Sequence[str], max_new_tokens: int) -> Tensor:
        # 1. Text prefix + the BOS frame (all pad ids): its logits predict step 0.
        ids, pads = self.encode(prompt)  # [B, L], [B]
        B, L = ids.shape
        self.prompt = prompt
        bos = torch.full((B, 1, self.num_codebooks), self.pad_id, dtype=torch.long, device=self.device)
        # fed [B, 1 + steps fed, K]: every audio frame in the cache; mask [B, L + 1]
        kv = "new" if self.fast is None else self.fast.new_cache(B, L + 1 + max_new_tokens + 64)
        padded = self.fast is None or bool(pads.any())  # the fast path needs no mask over an unpadded batch
        self.cache = hf.KVCache(mask=hf.padding_mask(pads, L + 1) if padded else None, fed=bos, kv=kv)
        if self.fast is not None:
            self.pos = -pads
            logits = self._fast_run(self.model.embed(ids, bos), None, prefill=True)  # [B, 1, K, V]
        else:
            out = self.model(text_ids=ids, audio_frames=bos, attention_mask=self.cache.mask,
                             past_key_values=self.cache.kv, use_cache=True)
            self._record_hidden(out, 1)
            logits = out.logits[:, -1:]
        self.pos = (L - pads) + 1
        # 2. Constrain the first step.
        return self._constrain(logits.float())  # [B, 1, K, V]

    def prompt_frames(self) -> list[Tensor]:
        """Per row the BOS frame ``[1, K]``: the audio prompt is empty (drafters match the output)."""
        return [row for row in self.cache.fed[:, :1]]

    @torch.inference_mode()
    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        T = frames.shape[1]
        if self.fast is not None:
            self.cache.grow(T, frames)  # the mask and fed frames cover the new positions (inputs reads the first S)
            logits = self._fast_run(self.model.embed(None, frames), parents)  # [B, T, K, V]
            self.pos = self.pos + T
            return self._constrain(logits.float(), parents=parents)
        kwargs = {}
        if parents is not None:  # a token tree: each node sees its ancestors and sits at pos + depth - 1
            kwargs["attention_mask"], kwargs["position_ids"] = self.cache.tree(parents, self.pos, self.model.dtype)
            self.cache.grow(T, frames)
        else:
            kwargs["attention_mask"] = self.cache.grow(T, frames)  # [B, S + T]; fed [B, first + T, K]
        out = self.model(audio_frames=frames, past_key_values=self.cache.kv, use_cache=True, **kwargs)
        self._record_hidden(out, T)
        self.pos = self.pos + T
        return self._constrain(out.logits.float(), parents=parents)  # [B, T, K, V]

    def _fast_run(self, embeds: Tensor, parents: Tensor | None, prefill: bool = False) -> Tensor:
        """The fast path over ``embeds [B, T, H]`` at ``pos`` (a chain, a tree, or the prefill with its padding
        mask): logits ``[B, T, K, V]`` (the prefill: its last frame's, ``[B, 1, K, V]``); the static cache grows by T (the caller updates ``pos`` and ``fed``)."""
        B, T = embeds.shape[:2]
        new_mask = self.cache.mask if prefill else None
        mask, positions = self.cache.lean_inputs(T, self.pos, parents, self.fast.dtype, new_mask=new_mask)
        hidden = self.fast(embeds, positions, mask, self.cache.kv)  # [B, T, H]
        if prefill:
            hidden = hidden[:, -1:]  # the BOS frame's state predicts step 0
        if self.hidden_wanted:
            self._hidden = hidden
        return self._head(hidden).view(B, hidden.shape[1], self.num_codebooks, self.vocab_size)

    def finished(self, frames: Tensor) -> Tensor:
        """The step whose last codebook holds its EOS ends the row (K - 1 steps after codebook 0's)."""
        return frames[..., -1] == self.eos_id  # [B, T]

    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        """Committed steps ``[B, T, K]`` -> one ``Audio`` per row; without a codec (a draft loaded with
        ``load_codec=False``) the codec codes ``[K, T_b]`` per row instead."""
        codes = self.codes(frames, lengths)
        return codes if self.codec is None else [self.decode_codes(c) for c in codes]

    # -- delay pattern ---------------------------------------------------------------------------
    def codes(self, frames: Tensor, lengths: Tensor) -> list[Tensor]:
        """Revert the delay: per row the codec codes ``[K, T_b]`` of the complete frames before the EOS."""
        n = frames.shape[1]
        live = torch.arange(n, device=frames.device)[None, :] < lengths[:, None].to(frames.device)  # [B, T]
        is_eos = (frames[..., 0] == self.eos_id) & live
        ends = torch.where(is_eos.any(1), is_eos.long().argmax(1), n).tolist()  # [B] first EOS step, or none
        return delay.committed_codes(frames, lengths, ends, self.codebook_size)

    @torch.inference_mode()
    def decode_codes(self, codes: Tensor) -> Audio:
        """Codec codes ``[K, T]`` -> ``Audio`` with a waveform ``[T * hop_length]``."""
        wav = torch.zeros(0) if codes.shape[1] == 0 else self.codec.decode(codes[None].to(self.device))[0, 0].float().cpu()
        return Audio(wav, self.sample_rate)

    def _own_steps(self, T: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each row's own fed frames (holes of rows that committed fewer frames skipped): ``fed [B, F, K]`` with
        a row's frames first, the BOS frame and its committed steps before this forward's T frames ``first [B]``
        (= the step its first new logits predict), and its first EOS step on codebook 0 among every fed frame,
        this forward's included (a chain's own frames end it too), or its steps fed when none: ``e [B]``."""
        fed = self.cache.fed  # [B, F, K] aligned with the last F slots of the mask
        mask = self.cache.mask  # None: an unpadded batch on the fast path without holes, every slot its row's
        valid = torch.ones(fed.shape[:2], dtype=torch.bool, device=fed.device) if mask is None else \
            mask[:, -fed.shape[1]:].bool()  # [B, F]
        order = torch.sort((~valid).long(), dim=1, stable=True).indices  # a row's own frames first, in order
        fed = fed.gather(1, order[..., None].expand_as(fed))
        n = valid.sum(dim=1)  # [B] BOS + committed steps + this forward's T frames
        steps = torch.arange(fed.shape[1] - 1, device=fed.device)[None]  # [1, F - 1] step index of fed[:, 1:]
        is_eos = (fed[:, 1:, 0] == self.eos_id) & (steps < (n - 1)[:, None])
        return fed, n - T, first_true(is_eos, n - 1)

    def _constrain(self, logits: Tensor, parents: Tensor | None = None) -> Tensor:
        """Mask ``logits [B, T, K, V]`` predicting each row's steps first.. (a tree with ``parents``: first +
        depth - 1) to the ids the delay pattern allows."""
        B, T, K, V = logits.shape
        dev = logits.device
        C, pad, eos = self.codebook_size, self.pad_id, self.eos_id
        if parents is None and self._steady(T, K):  # mid-stream: every codebook codes, codebook 0 may also end
            if self._steady_ids is None or self._steady_ids.shape != (K, V):
                first_book = torch.arange(K, device=dev)[:, None] == 0
                v = torch.arange(V, device=dev)
                self._steady_ids = (v < C) | (first_book & (v == eos))  # [K, V] what the general rule allows then
            return logits.masked_fill(~self._steady_ids, float("-inf"))
        if parents is None:
            # 1. e: step of the first EOS on codebook 0 among the fed frames (the BOS frame excluded).
            _, first, e = self._own_steps(T)
            steps = first[:, None] + torch.arange(T, device=dev)[None]  # [B, T] the step each frame predicts
            waiting, closing, closed = delay.phases_at(steps, K, e[:, None].expand(B, T))  # [B, T, K] each
        else:
            waiting, closing, closed = self._tree_phases(parents, B, T)  # [B, T, K] each
        # 2. Which kind of id each (row, step, codebook) may take: codebook 0 at s == e is its own EOS step.
        first_book = torch.arange(K, device=dev) == 0  # [K]
        only_pad = waiting | closed  # [B, T, K]
        only_eos = closing & ~first_book
        code_or_eos = ~closed & first_book  # codebook 0 before (and at) its EOS
        v = torch.arange(V, device=dev)
        allowed = torch.where(only_pad[..., None], v == pad,
                              torch.where(only_eos[..., None], v == eos,
                                          (v < C) | (code_or_eos[..., None] & (v == eos))))  # [B, T, K, V]
        return logits.masked_fill(~allowed, float("-inf"))

    _steady_ids = None  # [K, V] the ids allowed mid-stream (built on first use)

    def _steady(self, T: int, K: int) -> bool:
        """Whether a chain of ``T`` frames predicts steps that are all mid-stream in every row: past the delay's
        opening (each row has fed at least K - 1 steps before this forward) and before any end (no EOS on codebook
        0 among the fed steps). Then the general rule of ``_constrain`` allows every code in every codebook and
        EOS in codebook 0 alone; checked only where every cached slot is the row's own (no padding, no holes)."""
        fed = self.cache.fed  # [B, F, K]: the BOS frame, the committed steps and this forward's T frames
        if self.cache.mask is not None or fed is None or fed.shape[1] - T < K - 1:  # first step predicted: F - T
            return False
        return not bool((fed[:, 1:, 0] == self.eos_id).any())

    def _tree_phases(self, parents: Tensor, B: int, T: int) -> tuple[Tensor, Tensor, Tensor]:
        """Delay phases ``[B, T, K]`` of a tree's frames: frame t predicts step ``first + depth(t) - 1`` (each
        row's own first), and its e is the first EOS on codebook 0 among the committed frames and its own
        ancestors (itself included), never among other branches."""
        p = hf.rows_of(parents, B)  # [B, T]
        fed, first, _ = self._own_steps(T)
        steps = first[:, None] + tree.depths(p) - 1  # [B, T] the step each frame's logits predict
        none = first + T  # [B] "no EOS": never < s
        index = torch.arange(fed.shape[1] - 1, device=fed.device)[None]  # [1, F - 1]
        before = (fed[:, 1:, 0] == self.eos_id) & (index < (first - 1)[:, None])  # [B, F - 1] committed steps
        committed = first_true(before, none)  # [B]
        is_eos = self.cache.fed[:, -T:, 0] == self.eos_id  # [B, T] the tree's frames (fed last, at steps - 1)
        seen = tree.ancestors(p) & is_eos[:, None, :]  # [B, T, T] an EOS on an ancestor (or itself)
        own = torch.where(seen, (steps - 1)[:, None, :], none[:, None, None]).min(-1).values  # [B, T]
        return delay.phases_at(steps, self.num_codebooks, torch.minimum(committed[:, None], own))

    # -- self-drafter capability (``mmspec.protocols.HiddenTarget``) ------------------------------
    def output_head(self) -> torch.nn.Module:
        """The K parallel heads as one projection: hidden ``[..., H]`` -> ``[..., K * V]`` (codebook k's logits
        at ``k * V``), before the delay pattern's constraints (a self-drafter's guess that breaks them is
        simply rejected; the rules verify with the constrained logits)."""
        return hf.Projection(self.model.heads)

    def input_embeddings(self) -> torch.nn.Module:
        """Frames ``[..., K]`` -> the summed codebook embeddings ``[..., H]``, as the LM embeds them."""
        V = self.model.config.audio_vocab_size
        return hf.FrameEmbedding(self.model.audio_embed, [k * V for k in range(self.num_codebooks)])

    # -- pairing ---------------------------------------------------------------------------------
    def check_draft(self, draft: "SpeechTarget") -> None:
        """A draft LM must speak the same codec stream (codebooks, codes) and read the same voice."""
        if not isinstance(draft, SpeechTarget):
            raise ValueError(f"a speech target needs a speech draft model, got {type(draft).__name__}")
        if (draft.num_codebooks, draft.codebook_size) != (self.num_codebooks, self.codebook_size):
            raise ValueError(f"draft LM has {draft.num_codebooks} x {draft.codebook_size} codes, the target "
                             f"{self.num_codebooks} x {self.codebook_size}: they must share the codec")
        if draft.voice != self.voice:
            raise ValueError(f"draft voice {draft.voice} differs from the target's {self.voice}")


def first_true(x: Tensor, none: Tensor) -> Tensor:
    """Per row the index of the first True in ``x [B, S]`` (S may be 0), else ``none [B]``."""
    x = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)  # argmax needs a column
    return torch.where(x.any(dim=1), x.long().argmax(dim=1), none)
