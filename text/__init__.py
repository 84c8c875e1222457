"""Text modality: ``TextTarget`` over any Hugging Face causal LM, and the offline code-model zoo.

    from mmspec.text import TextTarget
    from mmspec import ModelDrafter, generate
    target = TextTarget.from_pretrained("zoo:code-target")
    gen = generate(target, ModelDrafter(TextTarget.from_pretrained("zoo:code-draft")), "def fib(n):", k=4)
"""
from .target import TextTarget, resolve

__all__ = ["TextTarget", "resolve", "generate"]


def generate(prompt=None, drafter: str = "none", rule: str | None = None, **kwargs):
    """Generate with the zoo (or ``target=``/``draft=`` names) and a named drafter (``prompt-lookup``, ``model``,
    ``jacobi``, ``lookahead``, ...) and rule, as the CLI names them. Keywords as in ``mmspec.methods.generate_with``."""
    from mmspec.methods import generate_with

    return generate_with("text", prompt, drafter, rule, **kwargs)
