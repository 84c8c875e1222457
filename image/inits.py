"""Spatial Jacobi init policies for image grids (raster order): copy the left neighbour, copy the token above.

An init is a callable ``init(seq [B, S, K], n) -> [B, n, K]`` that guesses the n frames after ``seq``
(committed new frames followed by the current guesses, so ``seq[:, i]`` is grid cell i). Both policies
are deterministic (the JacobiDrafter treats their guesses as q = one-hot, which keeps SJD exact).

``above`` needs the grid width. A ``SpatialInit`` built without one is completed by ``bind(target)``
(the target's ``grid_w``); the image API binds the CLI's policies when it loads a target.
"""
from __future__ import annotations

import torch
from torch import Tensor


class SpatialInit:
    """``SpatialInit("left")`` or ``SpatialInit("above", width=8)``: see the module docstring."""

    def __init__(self, kind: str, width: int | None = None):
        if kind not in ("left", "above"):
            raise ValueError(f"spatial init must be 'left' or 'above', got {kind!r}")
        if width is not None and (not isinstance(width, int) or width < 1):
            raise ValueError(f"grid width must be an integer >= 1, got {width!r}")
        self.kind, self.width = kind, width

    def bind(self, target) -> "SpatialInit":
        """The same policy for ``target``'s grid width (a target without a grid keeps the given width)."""
        width = getattr(target, "grid_w", None)
        return SpatialInit(self.kind, int(width) if width is not None else self.width)

    def __call__(self, seq: Tensor, n: int) -> Tensor:
        # 1. Left: every fresh guess copies its left neighbour, i.e. the newest known frame.
        if self.kind == "left" or self.width is None:
            if self.kind == "above":
                raise ValueError("the 'above' init needs the grid width: SpatialInit('above', width=...) or .bind(target)")
            return seq[:, -1:].expand(-1, n, -1).clone()  # [B, n, K]
        # 2. Above: cell i copies cell i - W (itself possibly a fresh guess); the first row copies left.
        out = seq
        for _ in range(n):
            i = out.shape[1]
            src = out[:, i - self.width: i - self.width + 1] if i >= self.width else out[:, -1:]
            out = torch.cat([out, src], dim=1)
        return out[:, seq.shape[1]:]  # [B, n, K]

    def __repr__(self) -> str:
        return f"SpatialInit({self.kind!r}, width={self.width})"


def left(width: int | None = None) -> SpatialInit:
    return SpatialInit("left", width)


def above(width: int | None = None) -> SpatialInit:
    return SpatialInit("above", width)
