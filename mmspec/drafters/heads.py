"""Moved (this name is kept for one release): ``mmspec.heads`` alone now means the self-drafters' trainable
parts, storage and training. The drafters are ``mmspec.drafters.EagleDrafter`` / ``MedusaDrafter``, their
shared helpers ``mmspec.drafters.selfdraft``, the int8 reads ``mmspec.drafters.int8``. Each old name still
resolves here, with a DeprecationWarning naming its new place."""
from __future__ import annotations

import warnings

from . import eagle, int8, medusa, selfdraft

MOVED = {  # old name -> (its new module, what it is)
    "EagleDrafter": ("mmspec.drafters", eagle.EagleDrafter), "MedusaDrafter": ("mmspec.drafters", medusa.MedusaDrafter),
    "committed_states": ("mmspec.drafters.selfdraft", selfdraft.committed_states),
    "read": ("mmspec.drafters.selfdraft", selfdraft.read), "choose": ("mmspec.drafters.selfdraft", selfdraft.choose),
    "Int8Head": ("mmspec.drafters.int8", int8.Int8Head), "DraftVocab": ("mmspec.drafters.int8", int8.DraftVocab),
    "int8_copy": ("mmspec.drafters.int8", int8.int8_copy),
}
REMOVED = {"attach": "mmspec.drafters.selfdraft.check (the checks) and selfdraft.head_of (the set-up)",
           "made_once": "mmspec.drafters.int8.Int8Copies (owned by the heads: MedusaHeads.int8, EagleLayer.int8)"}


def __getattr__(name: str):
    if name in MOVED:
        where, value = MOVED[name]
        warnings.warn(f"mmspec.drafters.heads.{name} moved to {where}.{name}; the old path goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        return value
    if name in REMOVED:
        raise AttributeError(f"mmspec.drafters.heads.{name} was removed; use {REMOVED[name]}")
    raise AttributeError(f"module 'mmspec.drafters.heads' has no attribute {name!r}")
