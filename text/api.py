"""The text modality's interface (``mmspec.modalities``): any Hugging Face causal LM, the code zoo by default."""
from __future__ import annotations

import argparse

from mmspec.bench import Method, Suite
from mmspec.modalities import Modality

from .corpus import heads_corpus
from .display import DISPLAY
from .target import ZOO, TextTarget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text")
    group.add_argument("--dtype", default=None, help="float32 (CPU default), float16, bfloat16 or auto")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--device-map", default=None, help="'auto' spreads a large model over GPUs (accelerate)")
    group.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    group.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")


def options(args: argparse.Namespace) -> dict:
    keys = ("dtype", "device", "device_map", "chat", "trust_remote_code")
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) not in (None, False)}


def load(name: str, *, dtype=None, device=None, device_map=None, chat: bool = False, trust_remote_code: bool = False,
         fast: bool | None = None, **_) -> TextTarget:
    """A ``TextTarget`` by hub name, local path or ``zoo:NAME`` (other modality options are ignored)."""
    return TextTarget.from_pretrained(name, dtype=dtype, device=device, device_map=device_map, chat=chat,
                                      trust_remote_code=trust_remote_code, fast=fast)


def prompts(prompt, batch: int) -> list[str]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
    return [prompt] * batch


def held_out(n: int, target) -> list[str]:
    """Held-out code prompts the zoo never trained on (deterministic)."""
    from .prompts import held_out_prompts

    return held_out_prompts(n)


SUITE = Suite(
    prompts=held_out, n_prompts=(20, 4), max_new=(128, 48), k=4,
    methods=(
        Method("prompt-lookup", "prompt-lookup"),
        Method("prompt-lookup k=8", "prompt-lookup", k=8, quick=False),  # the chain a tree of 8 is measured against
        Method("prompt-lookup k=16", "prompt-lookup", k=16, quick=False),  # drafts only what it matched, up to 16
        Method("model", "model"),
        Method("jacobi", "jacobi"),
        Method("lookahead", "lookahead"),
        Method("model / speculative T=1", "model", "speculative", 1.0),
        Method("model / reproducible T=1", "model", "reproducible", 1.0),
        Method("prompt-lookup / reproducible T=1", "prompt-lookup", "reproducible", 1.0, quick=False),
        # token trees: one verify forward over several candidate continuations
        # a trie of 8 nodes up to 8 deep: the newest match's continuation first, other matches in the rest of the
        # budget (so it verifies as many frames as the k = 8 chain; at depth 4 half its budget went to branches that
        # rarely pay on a CPU)
        Method("prompt-lookup tree=8", "prompt-lookup", tree=8, k=8, quick=False),
        Method("model tree=8", "model", tree=8, quick=False),
        Method("model dynamic tree=8", "model", tree=8, width=3, dynamic=True, quick=False),
        Method("prompt-lookup+model tree=8", "prompt-lookup+model", tree=8, quick=False),
        # self-drafting: the zoo's EAGLE layer on the target's own hidden states (zoo:code-heads)
        Method("heads", "heads", k=8),
        Method("prompt-lookup|heads", "prompt-lookup|heads", k=8),  # prompt lookup on a 3-gram match, else heads
        # the same with prompt lookup's matches up to 16 long (the heads stop at their config's depth, 8)
        Method("prompt-lookup|heads k=16", "prompt-lookup|heads", k=16, quick=False),
        Method("heads tree=12", "heads", tree=12, width=3, k=6, quick=False),
        Method("prompt-lookup+heads tree=12", "prompt-lookup+heads", tree=12, k=6),  # prompt lookup's nodes first
        Method("heads / speculative T=1", "heads", "speculative", 1.0, k=6, quick=False),
    ),
)

MODALITY = Modality(
    name="text", title="Text", unit="tokens",
    default_target="zoo:code-target", default_draft="zoo:code-draft",
    examples=("def fibonacci(n):", "class Stack:\n    def __init__(self):", "import os\n\ndef list_files(path):"),
    load=load, prompts=prompts, max_new_tokens=64, max_new_limit=512,
    add_arguments=add_arguments, options=options, suite=SUITE, extension=".txt", suffixes=(".txt", ".md", ".py"),
    compare=("prompt-lookup", "jacobi", "lookahead", "model", "heads", "prompt-lookup|heads"),
    display=DISPLAY, default_heads="zoo:code-heads", zoo=ZOO, heads_corpus=heads_corpus,
    notes="Python code model from the offline zoo (23M target, 2M draft), or any Hugging Face causal LM.",
)
