"""The offline image zoo recipe (``python -m mmspec.image.recipe train|evaluate``).

Modules: ``loop`` (sizes, the run and the training loop on ``mmspec.training``), ``stages``
(classifier, VQ tokenizer, AR target and drafter), ``train`` (the whole run and the saved zoo),
``evaluate`` (scores, samples through mmspec's own loop), ``card`` (model cards), ``cli``.
"""
from .cli import DEFAULT_OUT, main
from .loop import FULL, QUICK, SHARES, Run, train_loop

__all__ = ["main", "Run", "train_loop", "FULL", "QUICK", "SHARES", "DEFAULT_OUT"]
