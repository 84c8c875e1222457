"""Drafters: one file per family, each implementing ``start / propose / observe``."""
from .cascade import CascadeDrafter
from .coupled import CoupledJacobiDrafter
from .jacobi import JacobiDrafter
from .lookahead import LookaheadDrafter
from .mixed import MixedDrafter
from .model import ModelDrafter
from .ngram import PromptLookupDrafter
from .proactive import ProactiveDrafter

NAMES = ("none", "model", "prompt-lookup", "jacobi", "lookahead")

__all__ = ["CascadeDrafter", "CoupledJacobiDrafter", "ProactiveDrafter", "JacobiDrafter", "LookaheadDrafter", "MixedDrafter", "ModelDrafter", "PromptLookupDrafter", "NAMES"]
