"""What the CLI, the app and the benchmarks need to drive the text modality (the modality interface).

Every adapter package offers the same names: ``DEFAULT_TARGET``, ``DEFAULT_DRAFT``, ``DEFAULT_PROMPT``,
``DEFAULT_MAX_NEW``, ``INITS`` (extra Jacobi init policies), ``add_arguments(parser)``,
``options(args) -> dict``, ``load(name, **options) -> Target``, ``prompts(prompt, batch, **options)``
and ``save(generation, out) -> list[str]``.
"""
from __future__ import annotations

import argparse

from mmspec.files import numbered

from .target import TextTarget

DEFAULT_TARGET = "zoo:code-target"
DEFAULT_DRAFT = "zoo:code-draft"
DEFAULT_PROMPT = "def fibonacci(n):"
DEFAULT_MAX_NEW = 64
INITS: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text")
    group.add_argument("--dtype", default=None, help="float32 (CPU default), float16, bfloat16 or auto")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--device-map", default=None, help="'auto' spreads a large model over GPUs (accelerate)")
    group.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    group.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")


def options(args: argparse.Namespace) -> dict:
    return {
        "dtype": getattr(args, "dtype", None),
        "device": getattr(args, "device", None),
        "device_map": getattr(args, "device_map", None),
        "chat": getattr(args, "chat", False),
        "trust_remote_code": getattr(args, "trust_remote_code", False),
    }


def load(name: str, **opts) -> TextTarget:
    return TextTarget.from_pretrained(name, **opts)


def prompts(prompt: str, batch: int, **opts) -> list[str]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be non-empty text")
    return [prompt] * batch


def save(generation, out: str | None) -> list[str]:
    """Text outputs are printed, not written; with ``out`` they go to one UTF-8 file per row."""
    if not out:
        return []
    paths = numbered(out, len(generation.outputs))
    for path, text in zip(paths, generation.outputs):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return paths
