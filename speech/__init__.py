"""Speech modality: ``SpeechTarget`` over the zoo's codec LM, ``MusicgenTarget`` over Hugging Face MusicGen,
a training-free per-codebook drafter and a lossy relaxed accept rule for fine codebooks.

    from mmspec.speech import SpeechTarget
    from mmspec import ModelDrafter, generate
    wav = generate(SpeechTarget.from_pretrained("zoo:speech"), ModelDrafter(SpeechTarget.from_pretrained("zoo:speech-draft")), "Hello world", k=4).outputs[0]
"""
from .drafters import CodecLookupDrafter, fit_prior, lookup_init
from .relaxed import relaxed, relaxed_rule
from .target import SpeechTarget, resolve


def __getattr__(name):  # MusicGen pulls in more of transformers: import it on first use
    if name == "MusicgenTarget":
        from .musicgen import MusicgenTarget

        return MusicgenTarget
    raise AttributeError(name)


__all__ = ["SpeechTarget", "MusicgenTarget", "CodecLookupDrafter", "fit_prior", "lookup_init", "relaxed",
           "relaxed_rule", "resolve"]
