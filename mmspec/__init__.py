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


def _version() -> str:
    """The installed distribution's version (pyproject.toml); without an installed distribution (a bare
    source tree on ``sys.path``), the version written in the pyproject.toml next to this package."""
    from importlib import metadata

    try:
        return metadata.version("mmspec")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.exists() else None
        return found.group(1) if found else "0+unknown"


__version__ = _version()


def __getattr__(name):
    """A renamed attribute (``mmspec.decode``) fails naming its new name for one release."""
    from .renamed import ATTRIBUTES, message

    if name in ATTRIBUTES:
        raise AttributeError(f"mmspec.{message(name)}")
    raise AttributeError(f"module 'mmspec' has no attribute {name!r}")
