"""How the web app shows text: a monospace code block (indentation and blank lines kept), with the runs of
accepted-draft tokens marked (``<mark>`` without padding, so identifiers are not split visually)."""
from __future__ import annotations

import html

import torch

from mmspec.modalities import Display
from mmspec.types import PAD


def code_block(text: str, segments: list[tuple[str, bool]] | None = None) -> str:
    """``<pre><code>`` of ``text``, or of ``segments`` ``(text, from_draft)`` with drafted runs in ``<mark>``."""
    parts = [(text, False)] if segments is None else segments
    body = "".join(f'<mark class="mm-draft">{html.escape(s)}</mark>' if drafted else html.escape(s)
                   for s, drafted in parts if s)
    return f'<pre class="mm-code"><code>{body}</code></pre>'


def segments(target, frames, from_draft) -> list[tuple[str, bool]]:
    """Row 0's text split into runs of accepted-draft tokens and target tokens, decoded prefix by prefix
    (a token's text can depend on its neighbours, so each run is the difference of two decoded prefixes)."""
    n = int((frames[:, 0] != PAD).sum())
    drafted = from_draft.tolist()
    runs, prev, start = [], "", 0
    for i in range(1, n + 1):
        if i == n or drafted[i] != drafted[start]:
            text = target.decode(frames[None, :i], torch.tensor([i]))[0]
            runs.append((text[len(prev):], bool(drafted[start])))
            prev, start = text, i
    return [r for r in runs if r[0]]


def highlighted(target, frames, from_draft) -> str:
    return code_block("", segments(target, frames, from_draft))


DISPLAY = Display(
    component="HTML", value=code_block, live=highlighted, live_final=True,
    methods=(("prompt-lookup|heads", "auto"), ("prompt-lookup", "auto"), ("heads", "auto")),
    k=8,  # the self-drafter's chains pay at 8 (BENCHMARKS.md); prompt lookup drafts only what it matched
    helps={
        "heads": "an EAGLE layer reads the target's own hidden state and guesses ahead (zoo:code-heads): the "
                 "target's own features make it the most accurate drafter for its size",
        "prompt-lookup": "copies what followed the last few tokens earlier in the prompt or output: wins when the "
                         "output repeats text already there (lists, edits, boilerplate); no model at all",
        "model": "a small draft model guesses ahead: wins on ordinary code the draft predicts well",
        "lookahead": "n-grams collected from the target's own Jacobi guesses: wins on regular, repetitive output",
        "jacobi": "the target refines its own guesses: rarely more than one token per step on text",
    },
    examples=(
        ("def fibonacci(n):", "model", "ordinary code: the draft model guesses whole lines"),
        ("x = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,", "prompt-lookup",
         "a list that repeats its own pattern: prompt lookup copies it"),
        ("x = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,", "lookahead",
         "a long counting list: lookahead's n-grams edge out prompt lookup"),
    ),
)
