"""Training data for self-drafters: token windows of a corpus and the frozen target's hidden states on
them, computed once and cached on disk in resumable safetensors shards.

Only the last layer's hidden state is cached (fp16): the target's logits are exactly its output head
applied to that state (the state is taken after the final norm), so the trainer recomputes them with one
matrix product instead of storing ``V`` numbers per token.

Corpus (text): ``--data`` a text file, or a prepared zoo data folder (``train.bin`` / ``val.bin`` as
``mmspec.text.recipe.data.prepare`` writes them, with the same tokenizer as the target); by default the
zoo's prepared folder if one exists, else the Python standard library's sources, training on the files
outside the zoo's held-out split (``is_val``) and evaluating on the held-out ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor


def _stdlib_ids(tokenizer, held_out: bool, max_tokens: int) -> Iterator[int]:
    from mmspec.text.recipe.data import _usable, is_val, stable_hash, stdlib_files

    eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    made = 0
    for f in sorted((f for f in stdlib_files() if is_val(f.rel) == held_out), key=lambda f: stable_hash(f.rel)):
        text = _usable(f.path)
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


def token_stream(tokenizer, data: str | None, held_out: bool = False, max_tokens: int = 4_000_000) -> tuple[str, Iterator[int]]:
    """``(description, ids)`` of the training (or held-out) corpus; ValueError for a path that is neither."""
    from mmspec.text.recipe.data import DEFAULT_DATA

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


@torch.inference_mode()
def states_of(model, ids: torch.Tensor) -> torch.Tensor:
    """The frozen target's last hidden state (after the final norm) on ``ids [b, S]``: ``[b, S, H]``."""
    return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


def cache_states(model, seqs: Iterator[list[int]], folder: Path, key: dict, deadline: float,
                 shard: int = 16, bar=None) -> int:
    """Write shards ``shard_NNNNN.safetensors`` (``tokens [n, S]``, ``hidden [n, S, H]`` fp16) into ``folder``
    until ``seqs`` runs out or ``deadline`` (``time.time()``); resumes after the shards already there when
    ``key`` (target fingerprint, data, window) matches ``meta.json``. Returns the number of shards."""
    device = next(model.parameters()).device

    def batches(done: int):
        for _ in range(done * shard):  # the sequences already cached
            next(seqs, None)
        while batch := [s for _, s in zip(range(shard), seqs)]:
            ids = torch.tensor(batch, dtype=torch.long, device=device)  # [n, S]
            yield ids.cpu(), states_of(model, ids).to(torch.float16).cpu(), len(batch) == shard

    return write_shards(batches, folder, key, deadline, bar)


def write_shards(make_batches, folder: Path, key: dict, deadline: float, bar=None) -> int:
    """The shard writer of both caches: ``make_batches(shards_done)`` yields ``(tokens, hidden, full)`` per
    shard (``full`` False: the data ended inside it); it runs until the data ends or ``deadline`` passes
    (always writing at least one shard), after the shards already there when ``key`` matches."""
    import time

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("key") != key:
        for old in folder.glob("shard_*.safetensors"):
            old.unlink()
        meta = {"key": key, "shards": 0, "complete": False}
    done = first = meta["shards"]
    batches = make_batches(done)
    while not meta["complete"] and (time.time() < deadline or done == first == 0):
        item = next(batches, None)
        if item is None:
            meta["complete"] = True
            meta_path.write_text(json.dumps(meta))
            break
        tokens, hidden, full = item
        tmp = folder / f"shard_{done:05d}.tmp"
        save_file({"tokens": tokens.contiguous(), "hidden": hidden.contiguous()}, str(tmp))
        os.replace(tmp, folder / f"shard_{done:05d}.safetensors")
        done += 1
        meta.update(shards=done, complete=not full)
        meta_path.write_text(json.dumps(meta))
        if bar is not None:
            bar.update(tokens.shape[0])
    return done


def load_shards(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All cached ``tokens [N, S]`` and ``hidden [N, S, H]`` (fp16)."""
    from safetensors.torch import load_file

    parts = [load_file(str(p)) for p in sorted(folder.glob("shard_*.safetensors"))]
    if not parts:
        raise ValueError(f"no cached hidden states in {folder} (the corpus is shorter than one window?)")
    return torch.cat([p["tokens"] for p in parts]), torch.cat([p["hidden"] for p in parts])


# -- targets without a text corpus (image codes, speech frames): the target's own samples -----------------
@torch.inference_mode()
def states_along(target, prompts: list, frames: Tensor, lengths: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Teacher-force ``frames [B, T, K]`` (``lengths [B]``) through the target after its prompts, reading the
    hidden states of that very forward (``track_hidden``): per row ``(frames [L, K], hidden [L, H])`` with
    hidden[t] the state after frame t (the one whose output head predicts frame t + 1)."""
    T = frames.shape[1] - 1  # the last frame predicts past the run; leave it out (the context may end there)
    target.track_hidden(True)
    try:
        target.start(prompts, T)
        target.forward(frames[:, :T].clamp(min=0).to(target.device))  # PAD after a row's end: causal, never read
        hidden = target.hidden().float().cpu()  # [B, T, H]
    finally:
        target.track_hidden(False)
    return [(frames[b, : min(int(n), T)].cpu(), hidden[b, : min(int(n), T)]) for b, n in enumerate(lengths.tolist())]


def sampled_windows(target, prompts: Iterator, length: int, batch: int, seed: int, max_new: int,
                    temperature: float = 1.0) -> Iterator[tuple[Tensor, Tensor]]:
    """Windows ``(frames [S, K], hidden [S, H])`` of the target's own outputs at ``temperature`` (1: its exact
    distribution; 0: its greedy outputs, what a drafter for greedy decoding is asked to guess), ``batch``
    prompts per generation, rows concatenated and cut every ``length`` pairs."""
    from .. import accept
    from ..loop import generate
    from ..types import Sampling

    buf_f, buf_h, i = [], [], 0
    while True:
        chunk = [p for _, p in zip(range(batch), prompts)]
        if not chunk:
            return
        rule = accept.greedy if temperature == 0 else accept.speculative
        out = generate(target, None, chunk, max_new_tokens=max_new, rule=rule, sampling=Sampling(temperature=temperature),
                       seed=seed + i)
        i += 1
        for f, h in states_along(target, chunk, out.tokens, out.lengths):
            buf_f.append(f)
            buf_h.append(h)
        frames, hidden = torch.cat(buf_f), torch.cat(buf_h)
        n = frames.shape[0] // length
        for w in range(n):
            yield frames[w * length:(w + 1) * length], hidden[w * length:(w + 1) * length]
        buf_f, buf_h = [frames[n * length:]], [hidden[n * length:]]


def cache_sampled(make_windows, folder: Path, key: dict, deadline: float, shard: int = 16, bar=None) -> int:
    """``cache_states`` for sampled windows: shards of ``tokens [n, S, K]`` and ``hidden [n, S, H]`` (fp16),
    resumable when ``key`` matches; ``make_windows(shards_done)`` starts the window stream (a resumed run
    passes the shards already cached, so its samples are new ones)."""
    def batches(done: int):
        windows = make_windows(done)
        while got := [w for _, w in zip(range(shard), windows)]:
            yield (torch.stack([f for f, _ in got]), torch.stack([h for _, h in got]).to(torch.float16),
                   len(got) == shard)

    return write_shards(batches, folder, key, deadline, bar)
