"""Held-out code prompts for benchmarks: deterministic, from standard-library files the zoo never trained on.

Each prompt is up to ``context`` lines of a held-out file ending with a ``def`` line, the way an editor
asks for a completion: the model continues the function body. The prompt stops at the colon, before the
newline, where an editor's cursor sits: the tokenizer merges a newline with the next line's indentation
("\n        " is one token), so a prompt ending in a bare newline would ask for an unindented line.
"""
from __future__ import annotations

from .recipe.data import is_val, stable_hash, stdlib_files

FALLBACK = ["def fibonacci(n):", "class Stack:\n    def __init__(self):", "import os\n\ndef list_files(path):"]


def held_out_prompts(n: int = 20, context: int = 30, max_chars: int = 2400) -> list[str]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    files = sorted((f for f in stdlib_files() if is_val(f.rel)), key=lambda f: stable_hash(f.rel))
    prompts = []
    for f in files:
        try:
            lines = f.path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            continue
        for i, line in enumerate(lines):
            if i >= 10 and line.lstrip().startswith("def ") and line.rstrip().endswith(":"):
                text = "".join(lines[max(0, i - context) : i + 1]).rstrip("\r\n")
                if len(text) <= max_chars:
                    prompts.append(text)
                    break
        if len(prompts) == n:
            return prompts
    return (prompts + FALLBACK * n)[:n]
