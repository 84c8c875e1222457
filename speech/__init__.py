"""Speech modality: ``SpeechTarget`` over the zoo's codec LM, ``MusicgenTarget`` over Hugging Face MusicGen,
a training-free per-codebook drafter and a lossy relaxed accept rule for fine codebooks.

    from mmspec.speech import SpeechTarget
    from mmspec import ModelDrafter, generate
    gen = generate(SpeechTarget.from_pretrained("zoo:speech"), ModelDrafter(SpeechTarget.from_pretrained("zoo:speech-draft")), "Hello world", k=4)
    gen.save("hello.wav")                            # gen.outputs[0] is an Audio (waveform, sample_rate)
"""
from .audio import Audio
from .drafters import CodecLookupDrafter, fit_prior, lookup_init
from .relaxed import relaxed, relaxed_rule
from .target import SpeechTarget, resolve


def __getattr__(name):  # MusicGen pulls in more of transformers: import it on first use
    if name == "MusicgenTarget":
        from .musicgen import MusicgenTarget

        return MusicgenTarget
    raise AttributeError(name)


__all__ = ["Audio", "SpeechTarget", "MusicgenTarget", "CodecLookupDrafter", "fit_prior", "lookup_init", "relaxed",
           "relaxed_rule", "resolve", "generate"]


def generate(prompt=None, drafter: str = "none", rule: str | None = None, **kwargs):
    """Generate with the zoo (or ``target=``/``draft=`` names) and a named drafter (``model``, ``jacobi``,
    ``codec-lookup``, ...) and rule, as the CLI names them. Keywords as in ``mmspec.methods.generate_with``."""
    from mmspec.methods import generate_with

    return generate_with("speech", prompt, drafter, rule, **kwargs)
