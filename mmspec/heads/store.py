"""Saving and loading trained self-drafters: ``model.safetensors`` (fp16) + ``config.json`` in a folder.

The config names the kind, the sizes and the target the heads were trained for (its name, hidden size,
vocabulary, codebooks and a fingerprint of its output head's weights); ``load_heads`` refuses heads of
another target with a ValueError, because heads only make sense on the hidden states they were trained on.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..protocols import has_hidden
from .modules import EagleLayer, MedusaHeads

KINDS = ("medusa", "eagle", "medusa1", "eagle1")  # *1: the engines' layouts (engine_kinds.py)


def target_info(target, name: str = "") -> dict:
    """What identifies a target for its heads: name, hidden size, vocabulary, codebooks, fingerprint."""
    if not has_hidden(target):
        raise ValueError(f"{type(target).__name__} does not expose hidden states; self-drafters need them")
    head = target.output_head()
    weight = head.identity().detach()  # [R, H]
    # of the weights rounded to bfloat16, so one target loaded in float32, float16 or bfloat16 keeps its heads
    digest = _digest(weight.to(torch.bfloat16).view(torch.int16))
    return {"target": str(name), "hidden_size": int(head.hidden_size), "vocab_size": int(target.vocab_size),
            "num_codebooks": int(target.num_codebooks), "fingerprint": digest}


def _digest(weight: torch.Tensor) -> str:
    return hashlib.sha256(weight.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _legacy_fingerprint(target) -> str:
    """The fingerprint that heads saved by earlier mmspec versions carry: the float32 bytes of the output head."""
    return _digest(target.output_head().identity().detach().float())


def save_heads(module, folder: str | Path, info: dict, extra: dict | None = None) -> Path:
    """Write ``module`` (``MedusaHeads`` or ``EagleLayer``) as fp16 safetensors + config.json into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    config = {**module.config(), **info, **(extra or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    return folder


def resolve_heads(name: str | Path) -> Path:
    """A heads folder: a path, or ``zoo:NAME`` in the zoo of whichever registered modality ships it."""
    if not str(name).startswith("zoo:"):
        return Path(name)
    from ..modalities import get, names

    zoos = [get(m).zoo for m in names() if get(m).zoo is not None]
    for zoo in zoos:
        if (Path(zoo) / str(name)[4:] / "config.json").is_file():
            return Path(zoo) / str(name)[4:]
    shipped = sorted(f"zoo:{p.parent.name}" for z in zoos for p in Path(z).glob("*heads*/config.json"))
    raise ValueError(f"no zoo heads called {name!r}; shipped: {', '.join(shipped) or 'none'}")


def read_heads_config(folder: str | Path) -> dict:
    folder = resolve_heads(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{str(folder)!r} is not a heads folder (config.json + model.safetensors)")
    config = json.loads((folder / "config.json").read_text())
    if config.get("kind") not in KINDS:
        raise ValueError(f"{str(folder)!r} holds heads of kind {config.get('kind')!r}; known kinds: {', '.join(KINDS)}")
    return config


def check_target(config: dict, target, folder) -> None:
    """Refuse heads trained for another target (sizes, vocabulary, codebooks or output head differ)."""
    info = target_info(target)
    if config.get("fingerprint") != info["fingerprint"] and config.get("fingerprint") == _legacy_fingerprint(target):
        info["fingerprint"] = config["fingerprint"]  # heads saved before dtype-free fingerprints
    for key in ("hidden_size", "vocab_size", "num_codebooks", "fingerprint"):
        if config.get(key) != info[key]:
            raise ValueError(f"the heads in {str(folder)!r} were trained for another target "
                             f"({config.get('target') or 'unnamed'}): {key} {config.get(key)!r} != this target's "
                             f"{info[key]!r}")


def _checked_key(folder: Path, config: dict, target) -> tuple:
    """What a passed ``check_target`` held for, beside the target object itself: the (resolved) folder, what its config
    says of the target, and the target's output head's storage and version (an in-place change of the weights, as
    training makes, gives a new key)."""
    weight = target.output_head().identity()
    said = tuple(config.get(k) for k in ("hidden_size", "vocab_size", "num_codebooks", "fingerprint"))
    return str(folder), said, weight.data_ptr(), weight._version


def build(config: dict):
    from .engine_kinds import Eagle1Layer, Medusa1Heads

    kind = config["kind"]
    if kind in ("medusa", "medusa1"):
        return {"medusa": MedusaHeads, "medusa1": Medusa1Heads}[kind](config["hidden_size"], config["num_heads"])
    layer = {"eagle": EagleLayer, "eagle1": Eagle1Layer}[kind]
    return layer(config["hidden_size"], config["embed_dim"], config["num_attention_heads"], config["intermediate_size"],
                 config["window"])


def load_heads(folder: str | Path, target, tree: int | None = None, width: int = 2, cache: dict | None = None):
    """The drafter saved in ``folder`` (or ``zoo:NAME``) for ``target``: a ``MedusaDrafter`` (a static tree of
    each head's top-``width`` under ``tree`` nodes) or an ``EagleDrafter`` (an EAGLE-2 dynamic tree of ``tree``
    nodes, ``width`` children per expanded node; its config's ``depth`` caps the draft depth and its
    ``confidence`` stops a chain where the layer is unsure, both when set), on
    the target's device in float32 (CPU) or its dtype; ``tree`` None: a chain. ``cache``: a dict the caller
    keeps between runs (``Models.cache``), so repeated runs on one target read the file once (it holds one
    target's heads at a time); None reads it every time. ValueError for a missing folder, an unknown kind,
    or heads of another target."""
    from ..drafters.eagle import EagleDrafter
    from ..drafters.medusa import MedusaDrafter

    resolved = resolve_heads(folder)  # a zoo name is looked up once per load
    config = read_heads_config(resolved)
    key = _checked_key(resolved, config, target)
    held = None if cache is None else cache.get("checked")
    if held is None or held[0] is not target or held[1] != key:
        check_target(config, target, folder)  # a digest of the output head: 8 ms on the text zoo target, once per cache
        if cache is not None:
            cache["checked"] = (target, key)
    module = _module(resolved, config, target, {} if cache is None else cache)
    vocab = torch.tensor(config["draft_vocab"], dtype=torch.long) if config.get("draft_vocab") else None
    if config["kind"] in ("medusa", "medusa1"):
        return MedusaDrafter(module, tree=tree, width=width, vocab=vocab)
    return EagleDrafter(module, tree=tree, width=width, vocab=vocab, depth=config.get("depth"),
                        confidence=config.get("confidence", 0.0))


def draft_vocab(tokens: torch.Tensor, vocab_size: int, size: int) -> list[int]:
    """The ``size`` most frequent ids in ``tokens`` (a reduced draft vocabulary), sorted; [] for all."""
    if size <= 0 or size >= vocab_size:
        return []
    counts = torch.bincount(tokens.flatten().clamp(min=0), minlength=vocab_size)[:vocab_size]
    return sorted(counts.topk(size).indices.tolist())


def _module(folder: Path, config: dict, target, cache: dict):
    """The heads module in ``folder`` on ``target``'s device, from ``cache["heads"]`` when it holds this file
    for this very target (the entry keeps the target, so its identity cannot pass to another object)."""
    from safetensors.torch import load_file

    key = (str(folder.resolve()), (folder / "model.safetensors").stat().st_mtime_ns)
    held = cache.get("heads")
    if held is not None and held[0] == key and held[1] is target:
        return held[2]
    module = build(config)
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    dtype = next(target.output_head().parameters()).dtype
    module = module.to(device=target.device, dtype=torch.float32 if target.device.type == "cpu" else dtype)
    cache["heads"] = (key, target, module)  # one target's heads at a time: a loaded module is small, never a leak
    return module
