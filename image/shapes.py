"""Procedural "shapes" data set: 32x32 RGB images of a coloured shape on a varied background.

Why procedural: the offline zoo must train without downloading anything, on any machine, and its
quality must be checkable offline (a tiny classifier recognises the class of a generated image).

Each image is a pure function of ``(seed, index)``: the class is ``index % NUM_CLASSES`` (balanced),
and everything else (background kind and colours, shape colour jitter, size, position, orientation)
comes from ``numpy.random.default_rng([seed, index])``. The module imports only numpy and Pillow so
that worker processes start fast.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
_SUPER = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges

SHAPES = ("disk", "ring", "square", "triangle", "cross", "bar")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
}
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NUM_CLASSES = len(CLASS_NAMES)


def class_index(name: str) -> int:
    """Index of a class name such as ``"red ring"``; ValueError listing the allowed names otherwise."""
    key = " ".join(str(name).lower().split())
    if key not in CLASS_NAMES:
        raise ValueError(f"unknown class {name!r}; allowed: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(key)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A desaturated background (plain, gradient or noise) so shape colours stay unambiguous."""
    n = IMAGE_SIZE

    def grey() -> np.ndarray:  # [3] low-saturation colour
        return rng.uniform(25, 190) + rng.uniform(-15, 15, size=3)

    kind = rng.integers(3)
    if kind == 0:  # 1. plain colour
        bg = np.broadcast_to(grey(), (n, n, 3)).astype(np.float32)
    elif kind == 1:  # 2. linear gradient in a random direction
        a, b = grey(), grey()
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
        t = np.clip(0.5 + xx * np.cos(ang) + yy * np.sin(ang), 0, 1)[..., None]
        bg = (a * (1 - t) + b * t).astype(np.float32)
    else:  # 3. grey-ish noise, mildly smoothed (pure white noise is wasted VQ capacity)
        base = grey()
        noise = rng.normal(0, rng.uniform(6, 18), size=(n // 2, n // 2, 1))
        noise = np.repeat(np.repeat(noise, 2, 0), 2, 1)
        bg = (base + noise).astype(np.float32)
    return bg  # [32, 32, 3]


def _mask(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage mask in [0, 1] for one shape with jittered size and position."""
    s, n = _SUPER, IMAGE_SIZE
    r = rng.uniform(7.0, 12.0)  # half extent in output pixels
    cx, cy = rng.uniform(r + 1, n - r - 1, size=2)
    img = Image.new("L", (n * s, n * s), 0)
    d = ImageDraw.Draw(img)
    R, X, Y = r * s, cx * s, cy * s
    if shape == "disk":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
    elif shape == "ring":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        ri = R * rng.uniform(0.5, 0.62)
        d.ellipse([X - ri, Y - ri, X + ri, Y + ri], fill=0)
    elif shape == "square":
        h = R * 0.85
        d.rectangle([X - h, Y - h, X + h, Y + h], fill=255)
    elif shape == "triangle":
        up = 1 if rng.random() < 0.5 else -1
        d.polygon([(X, Y - up * R), (X - R, Y + up * R * 0.8), (X + R, Y + up * R * 0.8)], fill=255)
    elif shape == "cross":
        t = R * rng.uniform(0.28, 0.38)
        d.rectangle([X - R, Y - t, X + R, Y + t], fill=255)
        d.rectangle([X - t, Y - R, X + t, Y + R], fill=255)
    elif shape == "bar":
        t = R * rng.uniform(0.25, 0.35)
        box = [X - R, Y - t, X + R, Y + t] if rng.random() < 0.5 else [X - t, Y - R, X + t, Y + R]
        d.rectangle(box, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    small = img.resize((n, n), Image.BOX)
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0  # [32, 32, 1]


def render(seed: int, index: int) -> tuple[np.ndarray, int]:
    """Image ``index`` of the data set with ``seed``: (uint8 [32, 32, 3], class id)."""
    label = index % NUM_CLASSES
    rng = np.random.default_rng([seed, index])
    colour_name, shape = CLASS_NAMES[label].split(" ")
    # 1. background, 2. shape colour with brightness / tint jitter, 3. composite through the mask
    bg = _background(rng)
    colour = np.array(COLOURS[colour_name], np.float32) * rng.uniform(0.8, 1.05)
    colour = colour + rng.uniform(-18, 18, size=3)
    alpha = _mask(shape, rng)
    out = bg * (1 - alpha) + colour * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), label


def _render_range(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, start, stop = args
    imgs = np.empty((stop - start, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty(stop - start, np.int64)
    for j, i in enumerate(range(start, stop)):
        imgs[j], labels[j] = render(seed, i)
    return imgs, labels


def make_dataset(n: int, seed: int = 0, start: int = 0, workers: int | None = None):
    """Images ``start .. start + n - 1``: (uint8 [N, 32, 32, 3], int64 [N]); same result for any workers.

    ``workers=None`` uses up to 8 processes (the GPU box shares 16 cores with other jobs).
    """
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, workers)
    chunk = 1000
    jobs = [(seed, a, min(a + chunk, start + n)) for a in range(start, start + n, chunk)]
    if workers == 1 or len(jobs) == 1:
        parts = [_render_range(j) for j in jobs]
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            parts = pool.map(_render_range, jobs)
    if not parts:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def grid_image(images: np.ndarray, ncol: int) -> Image.Image:
    """Tile uint8 [N, H, W, 3] images into one PIL image with a 1-pixel gap (for sample sheets)."""
    n, h, w, _ = images.shape
    nrow = -(-n // ncol)
    sheet = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        sheet[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = images[i]
    return Image.fromarray(sheet)
