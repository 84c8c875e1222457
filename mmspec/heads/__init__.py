"""Self-drafters' trainable parts, their storage and their training (``mmspec heads train``).

    from mmspec.heads import load_heads
    drafter = load_heads("out/medusa", target)         # refuses heads trained for another target
    mmspec.generate(target, drafter, prompt, k=4)
"""
from .modules import EagleLayer, MedusaHeads, eagle_for
from .store import load_heads, save_heads, target_info

__all__ = ["EagleLayer", "MedusaHeads", "eagle_for", "load_heads", "save_heads", "target_info"]
