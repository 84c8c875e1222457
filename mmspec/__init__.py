"""mmspec: one draft/refine engine for speculative decoding of text, image-token and speech-codec models.

The core (this package) knows frames ``[B, T, K]`` only; ``mmspec.text``, ``mmspec.image`` and
``mmspec.speech`` hold the adapters.
"""
from . import accept, modalities, tree
from .accept import Rule, RuleSpec
from .drafters import CascadeDrafter, JacobiDrafter, LookaheadDrafter, MixedDrafter, ModelDrafter, PromptLookupDrafter
from .loop import autoregressive, generate, stream
from .sampling import Sampler
from .types import PAD, Draft, Generation, Sampling, Step, Verdict

__all__ = [
    "accept", "modalities", "tree", "stream", "generate", "autoregressive", "Sampler", "Sampling", "Draft", "Verdict", "Step",
    "Generation", "PAD", "Rule", "RuleSpec", "CascadeDrafter", "JacobiDrafter", "LookaheadDrafter", "MixedDrafter", "ModelDrafter", "PromptLookupDrafter",
]
__version__ = "0.1.0"
