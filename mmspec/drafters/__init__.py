"""Drafters: one file per family, each implementing ``start / propose / observe``."""
from .cascade import CascadeDrafter
from .jacobi import JacobiDrafter
from .lookahead import LookaheadDrafter
from .mixed import MixedDrafter
from .model import ModelDrafter
from .ngram import PromptLookupDrafter

NAMES = ("none", "model", "prompt-lookup", "jacobi", "lookahead")

__all__ = ["CascadeDrafter", "JacobiDrafter", "LookaheadDrafter", "MixedDrafter", "ModelDrafter", "PromptLookupDrafter", "NAMES"]
