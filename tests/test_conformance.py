"""Every Target runs the conformance suite (``mmspec.testing.conformance``) on a tiny random model.

A new adapter gets the whole suite with one entry in ``ADAPTERS``: a name and a function of the pytest
``request`` that returns ``(make_target, prompts, options)`` (options: ``draft``, ``join``, ``unguided``: the
same model with guidance off, for the hidden-state checks of a guided target).
"""
from __future__ import annotations

import pytest
import torch

from mmspec.protocols import has_hidden
from mmspec.testing import ToyTarget, conformance

from builders import CLASSES, tiny_meta


def toy(request):
    prompts = [torch.tensor([[[1], [2], [0]]]), torch.tensor([[[3], [1], [2]]])]  # rows stay aligned: same length
    return (lambda: ToyTarget(vocab_size=8, seed=5, eos_id=7)), prompts, dict(
        draft=lambda: ToyTarget(vocab_size=8, seed=5, eos_id=7).perturbed(), join=torch.cat)


def text(request):
    from mmspec.text import TextTarget

    paths = request.getfixturevalue("tiny_models")
    return (lambda: TextTarget.from_pretrained(paths["llama"], device="cpu")), ["def add(a, b):", "class Stack:\n    def"], \
        dict(draft=lambda: TextTarget.from_pretrained(paths["llama-draft"], device="cpu"))


def image(request):
    from mmspec.image import ImageTarget

    models = request.getfixturevalue("image_models")
    make = lambda which, scale=3.0: ImageTarget(*models[which], tiny_meta(), guidance_scale=scale)  # noqa: E731
    return (lambda: make("target")), CLASSES[:2], dict(draft=lambda: make("draft"), unguided=lambda: make("target", 1.0))


def image_loaded(request):
    from mmspec.image import ImageTarget

    zoo = request.getfixturevalue("image_zoo")
    make = lambda **scale: ImageTarget.from_pretrained(str(zoo / "shapes"), device="cpu", **scale)  # noqa: E731
    return make, CLASSES[1:], dict(unguided=lambda: make(guidance_scale=1.0))


def janus(request):
    from mmspec.image.janus import JanusTarget

    model, draft = request.getfixturevalue("janus_models")
    return (lambda: JanusTarget(model, guidance_scale=3.0)), [[2, 10, 11, 12, 5], [2, 20, 5]], dict(
        draft=lambda: JanusTarget(draft, guidance_scale=3.0), unguided=lambda: JanusTarget(model, guidance_scale=1.0))


def speech(request):
    from mmspec.speech import SpeechTarget

    folders = request.getfixturevalue("speech_folders")
    return (lambda: SpeechTarget.from_pretrained(folders["target"], device="cpu")), ["Hello world", "Hi there, how are you"], \
        dict(draft=lambda: SpeechTarget.from_pretrained(folders["draft"], device="cpu", load_codec=False))


def musicgen(request):
    from mmspec.speech import MusicgenTarget

    tokenizer = request.getfixturevalue("tokenizer")
    model, small = request.getfixturevalue("musicgen_models")
    return (lambda: MusicgenTarget(model, tokenizer, guidance_scale=3.0)), ["hello world", "for i in range(10)"], \
        dict(draft=lambda: MusicgenTarget(small, tokenizer, guidance_scale=3.0),
             unguided=lambda: MusicgenTarget(model, tokenizer, guidance_scale=1.0))


ADAPTERS = {"toy": toy, "text": text, "image": image, "image-loaded": image_loaded, "janus": janus,
            "speech": speech, "musicgen": musicgen}
HIDDEN = {"text", "image", "image-loaded", "janus", "speech", "musicgen"}  # run the HiddenTarget checks too


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_conformance(request, name):
    make_target, prompts, options = ADAPTERS[name](request)
    assert has_hidden(make_target()) == (name in HIDDEN)
    conformance(make_target, prompts, **options)


# -- negative controls: the suite catches a broken adapter ---------------------------------------------

class NoRollback(ToyTarget):
    def keep(self, pos, path=None):  # forgets to drop the rejected frames
        self.pos = pos.clone()


class DecodesPad(ToyTarget):
    def decode(self, frames, lengths):  # hands PAD to a "decoder" (an embedding lookup)
        return list(torch.nn.functional.embedding(frames[..., 0], torch.zeros(self.vocab_size, 1)))


@pytest.mark.parametrize("broken, match", [(NoRollback, "rollback|Tensor-likes"), (DecodesPad, "negative id")])
def test_the_suite_catches_broken_adapters(broken, match):
    make, prompts, options = toy(None)
    with pytest.raises(AssertionError, match=match):
        conformance(lambda: broken(vocab_size=8, seed=5, eos_id=7), prompts, join=torch.cat)


# -- the hidden-state capability (HiddenTarget): a toy that has it, and broken ones the suite catches ------

class ToyHidden(ToyTarget):
    """A ToyTarget with the self-drafter capability: its hidden state of a frame is the one-hot pair (frame,
    the frame before it), ``[2 V]``, which its output head (one linear map of the tables) turns into exactly
    its logits (K = 1)."""

    hidden_wanted, attention_heads, _hidden = False, None, None

    def track_hidden(self, on):
        self.hidden_wanted, self._hidden = bool(on), None

    def hidden(self):
        if self._hidden is None:
            raise ValueError("ToyHidden recorded no hidden state")
        return self._hidden

    def output_head(self):
        from mmspec.hf import Projection

        linear = torch.nn.Linear(2 * self.vocab_size, self.vocab_size, bias=False)
        linear.weight.data = torch.cat([self.w1[0, 0].T, self.w2[0, 0].T], dim=1)  # [V, 2 V]
        return Projection(linear)

    def input_embeddings(self):
        from mmspec.hf import FrameEmbedding

        return FrameEmbedding(torch.nn.Embedding(self.vocab_size, 4))

    def _state(self, frames, before):  # [B, T, 1] twice -> [B, T, 2 V]
        one_hot = torch.nn.functional.one_hot
        return torch.cat([one_hot(frames[..., 0], self.vocab_size), one_hot(before[..., 0], self.vocab_size)], -1).float()

    def start(self, prompt, max_new_tokens):
        logits = super().start(prompt, max_new_tokens)
        if self.hidden_wanted:
            self._hidden = self._state(self.history[:, -1:], self.history[:, -2:-1])
        return logits

    def forward(self, frames, parents=None):
        before = torch.cat([self.history[:, -1:], frames[:, :-1]], dim=1)  # chains (the hidden checks' forwards)
        logits = super().forward(frames, parents)
        if self.hidden_wanted:
            self._hidden = self._state(frames, before)
        return logits


class CropsHiddenOnKeep(ToyHidden):
    def keep(self, pos, path=None):  # drops the rejected frames' states too: the drafter needs the last forward's
        super().keep(pos, path)
        if self._hidden is not None:
            self._hidden = self._hidden[:, :1]


class ShiftedHidden(ToyHidden):
    def forward(self, frames, parents=None):  # off by one: frame t gets frame t - 1's state
        logits = super().forward(frames, parents)
        if self.hidden_wanted:
            self._hidden = self._hidden.roll(1, dims=1)
        return logits


class WholePrefill(ToyHidden):
    def start(self, prompt, max_new_tokens):  # records every prompt frame, not the one that gave the logits
        logits = ToyTarget.start(self, prompt, max_new_tokens)
        if self.hidden_wanted:
            self._hidden = self._state(self.history, torch.cat([self.history[:, :1], self.history[:, :-1]], 1))
        return logits


def test_a_toy_with_hidden_states_passes():
    make, prompts, options = toy(None)
    conformance(lambda: ToyHidden(vocab_size=8, seed=5, eos_id=7), prompts, join=torch.cat)


@pytest.mark.parametrize("broken, match", [(CropsHiddenOnKeep, "keep must leave hidden"),
                                           (ShiftedHidden, "differs from the unguided"),
                                           (WholePrefill, "prefill records")])
def test_the_suite_catches_broken_hidden_states(broken, match):
    make, prompts, options = toy(None)
    with pytest.raises(AssertionError, match=match):
        conformance(lambda: broken(vocab_size=8, seed=5, eos_id=7), prompts, join=torch.cat)


def test_a_guided_target_needs_its_unguided_twin(request):
    """Under guidance the forward's logits are the mix, not the head's output on the conditional state."""
    make_target, prompts, options = image(request)
    options.pop("unguided")
    with pytest.raises(AssertionError, match="differs from the unguided"):
        conformance(make_target, prompts, **options)
