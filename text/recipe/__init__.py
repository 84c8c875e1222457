"""The offline text zoo recipe (``python -m mmspec.text.recipe prepare|train|evaluate|distill``).

Modules: ``data`` (corpus, split, tokenizer, ``prepare``), ``models`` (shapes, configs, fp16 save),
``train`` (the stages on ``mmspec.training``), ``distill`` (drafter variants against a saved target),
``evaluate`` (held-out scores, completions through mmspec's own loop), ``card`` (model cards),
``cli`` (the command line).
"""
from .cli import DEFAULT_OUT, main
from .data import DEFAULT_DATA, prepare
from .distill import agreement
from .models import DRAFT_PARAM_RANGE, DRAFT_VARIANTS, llama_config, parse_variants

__all__ = ["main", "prepare", "agreement", "parse_variants", "llama_config", "DRAFT_VARIANTS",
           "DRAFT_PARAM_RANGE", "DEFAULT_DATA", "DEFAULT_OUT"]
