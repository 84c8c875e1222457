"""Rolling back a model's key/value cache through its own public ``crop`` (Hugging Face ``Cache`` objects).

The loop commits the batch minimum, so a rollback moves every row by the same number of frames; this
checks that and crops. ``crop(-n)`` removes n positions in every transformers version (a positive
argument means "keep n" in 4.x and is refused in 5.x), and ``crop`` is never called with 0.
"""
from __future__ import annotations

from torch import Tensor


def crop(cache, now: Tensor, pos: Tensor, who: str) -> int:
    """Forget the positions after ``pos [B]`` (the cache holds ``now [B]``); returns how many were removed."""
    remove = int((now - pos).max())
    if not bool(((now - pos) == remove).all()):
        raise ValueError(f"{who} rolls all rows back by the same number of frames")
    if remove > 0:
        cache.crop(-remove)
    return remove
