"""Drafters: one file per family, each implementing ``start / propose / observe`` and declaring
``wants_hidden`` (``mmspec.protocols.Drafter``)."""
from .cascade import CascadeDrafter
from .coupled import CoupledJacobiDrafter
from .eagle import EagleDrafter
from .jacobi import JacobiDrafter
from .lookahead import LookaheadDrafter
from .medusa import MedusaDrafter
from .mixed import MixedDrafter
from .model import ModelDrafter
from .ngram import PromptLookupDrafter
from .proactive import ProactiveDrafter

NAMES = ("none", "model", "prompt-lookup", "jacobi", "lookahead")

__all__ = ["CascadeDrafter", "CoupledJacobiDrafter", "ProactiveDrafter", "EagleDrafter", "JacobiDrafter", "LookaheadDrafter", "MedusaDrafter", "MixedDrafter",
           "ModelDrafter", "PromptLookupDrafter", "NAMES"]
