"""The text a self-drafter for a text target trains on (``mmspec heads train``; the text ``Modality``'s
``heads_corpus``): windows of a corpus's token ids, each read by the target after a one-token prompt (its
BOS, else its EOS text: a document start), so ``mmspec.heads.data`` records their hidden states through the
target's own ``track_hidden`` / ``hidden``, as it does for image and speech targets.

The corpus: ``--data`` a text file, or a prepared zoo data folder (``train.bin`` / ``val.bin`` as
``mmspec.text.recipe.data.prepare`` writes them, with the same tokenizer as the target); by default the
zoo's prepared folder if one exists, else the Python standard library's sources, training on the files
outside the zoo's held-out split (``is_val``) and evaluating on the held-out ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .recipe.data import DEFAULT_DATA, is_val, stable_hash, stdlib_files, usable


def heads_corpus(target, data: str | None, held_out: bool, max_tokens: int,
                 length: int) -> tuple[str, Iterator[tuple[str, Tensor]]]:
    """``(description, examples)``: consecutive windows of ``length`` token ids of the training (held-out)
    corpus, each ``(prompt, frames [length, 1])``; ValueError for ``data`` that is neither a text file nor a
    prepared folder, or for windows the target's context cannot hold after the prompt."""
    tokenizer = target.tokenizer
    prompt = tokenizer.bos_token or tokenizer.eos_token
    if not prompt:
        raise ValueError("a text target's windows start after its BOS or EOS token; this tokenizer has neither")
    used = int(target.encode(prompt)[0].shape[1])
    if used + length > target.max_frames:
        raise ValueError(f"--seq-len {length} after the {used}-token prompt exceeds the target's context of "
                         f"{target.max_frames} tokens")
    what, ids = token_stream(tokenizer, data, held_out, max_tokens)
    return what, ((prompt, torch.tensor(w, dtype=torch.long)[:, None]) for w in windows(ids, length))


def token_stream(tokenizer, data: str | None, held_out: bool = False,
                 max_tokens: int = 4_000_000) -> tuple[str, Iterator[int]]:
    """``(description, ids)`` of the training (or held-out) corpus; ValueError for a path that is neither."""
    folder = Path(data) if data is not None else Path(DEFAULT_DATA)
    if folder.is_dir() and _prepared(folder, tokenizer):
        arr = np.fromfile(folder / ("val.bin" if held_out else "train.bin"), dtype=np.uint16)[:max_tokens]
        return f"{folder} ({'val' if held_out else 'train'}.bin)", iter(arr.tolist())
    if data is None:
        return f"stdlib sources ({'held-out' if held_out else 'training'} files)", _stdlib_ids(tokenizer, held_out, max_tokens)
    if folder.is_file():
        if held_out:
            return "none", iter(())
        return str(folder), iter(tokenizer(folder.read_text(encoding="utf-8"))["input_ids"][:max_tokens])
    raise ValueError(f"--data {data!r} is neither a text file nor a prepared data folder (train.bin + tokenizer/ "
                     "with the target's tokenizer)")


def windows(ids: Iterator[int], length: int) -> Iterator[list[int]]:
    """Consecutive non-overlapping windows of ``length`` tokens."""
    buf: list[int] = []
    for i in ids:
        buf.append(i)
        if len(buf) == length:
            yield buf
            buf = []


def _stdlib_ids(tokenizer, held_out: bool, max_tokens: int) -> Iterator[int]:
    eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    made = 0
    for f in sorted((f for f in stdlib_files() if is_val(f.rel) == held_out), key=lambda f: stable_hash(f.rel)):
        text = usable(f.path)
        if text is None:
            continue
        ids = [eot] + tokenizer(text)["input_ids"]
        yield from ids
        made += len(ids)
        if made >= max_tokens:
            return


def _prepared(folder: Path, tokenizer) -> bool:
    """A zoo data folder whose tokenizer is the target's."""
    if not (folder / "train.bin").is_file() or not (folder / "tokenizer").is_dir():
        return False
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder / "tokenizer")).get_vocab() == tokenizer.get_vocab()
