"""Text modality: ``TextTarget`` over any Hugging Face causal LM, and the offline code-model zoo.

    from mmspec.text import TextTarget
    from mmspec import ModelDrafter, generate
    target = TextTarget.from_pretrained("zoo:code-target")
    gen = generate(target, ModelDrafter(TextTarget.from_pretrained("zoo:code-draft")), "def fib(n):", k=4)
"""
from .target import TextTarget, resolve

__all__ = ["TextTarget", "resolve"]
