"""No hidden state: loaded models and heads live in caches the caller owns, and no library module reads an
environment variable (only command-line entry points may)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmspec import modalities
from mmspec.heads import load_heads
from mmspec.modalities import Models

ROOT = Path(__file__).resolve().parent.parent


def test_no_library_module_reads_the_environment():
    found = []
    for folder in ("mmspec", "image", "speech", "text"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            if file.name in ("cli.py", "__main__.py"):  # command-line entry points
                continue
            for n, line in enumerate(file.read_text().splitlines(), 1):
                if re.search(r"os\.environ|getenv\(", line):
                    found.append(f"{file.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def text_target():
    mod = modalities.get("text")
    return mod, mod.load(mod.default_target)


def test_heads_are_read_once_per_cache_the_caller_keeps(monkeypatch, text_target):
    import safetensors.torch

    mod, target = text_target
    reads = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    cache: dict = {}
    load_heads(mod.default_heads, target, cache=cache)
    module = cache["heads"][2]
    load_heads(mod.default_heads, target, tree=4, cache=cache)
    assert len(reads) == 1 and cache["heads"][2] is module  # the second drafter reuses the loaded heads
    load_heads(mod.default_heads, target)
    assert len(reads) == 2  # no cache given: read again
    other = mod.load(mod.default_target)  # an equal but distinct target gets its own copy
    load_heads(mod.default_heads, other, cache=cache)
    assert len(reads) == 3 and cache["heads"][1] is other and cache["heads"][2] is not module


def test_the_one_liner_keeps_models_only_in_the_callers_cache():
    import dataclasses

    from mmspec.methods import generate_with

    loads = []
    real = modalities.get("text")
    mod = dataclasses.replace(real, load=lambda name, **options: loads.append(name) or real.load(name, **options))
    models = Models(max_models=2)
    first = generate_with(mod, "def f():", "prompt-lookup", max_new_tokens=3, models=models)
    again = generate_with(mod, "def f():", "prompt-lookup", max_new_tokens=3, models=models)
    assert loads == [mod.default_target] and len(models) == 1 and first.token_ids() == again.token_ids()
    generate_with(mod, "def f():", max_new_tokens=3)
    generate_with(mod, "def f():", max_new_tokens=3)
    assert len(loads) == 3  # without a cache of its own, every call loads what it needs
