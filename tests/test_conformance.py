"""Every Target runs the conformance suite (``mmspec.testing.conformance``) on a tiny random model.

A new adapter gets the whole suite with one entry in ``ADAPTERS``: a name and a function of the pytest
``request`` that returns ``(make_target, prompts, options)`` (options: ``draft``, ``join``).
"""
from __future__ import annotations

import pytest
import torch

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
    make = lambda which: ImageTarget(*models[which], tiny_meta(), guidance_scale=3.0)  # noqa: E731
    return (lambda: make("target")), CLASSES[:2], dict(draft=lambda: make("draft"))


def image_loaded(request):
    from mmspec.image import ImageTarget

    zoo = request.getfixturevalue("image_zoo")
    return (lambda: ImageTarget.from_pretrained(str(zoo / "shapes"), device="cpu")), CLASSES[1:], {}


def janus(request):
    from mmspec.image.janus import JanusTarget

    model, draft = request.getfixturevalue("janus_models")
    return (lambda: JanusTarget(model, guidance_scale=3.0)), [[2, 10, 11, 12, 5], [2, 20, 5]], dict(
        draft=lambda: JanusTarget(draft, guidance_scale=3.0))


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
        dict(draft=lambda: MusicgenTarget(small, tokenizer, guidance_scale=3.0))


ADAPTERS = {"toy": toy, "text": text, "image": image, "image-loaded": image_loaded, "janus": janus,
            "speech": speech, "musicgen": musicgen}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_conformance(request, name):
    make_target, prompts, options = ADAPTERS[name](request)
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
