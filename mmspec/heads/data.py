"""Training data for self-drafters: windows of frames and the frozen target's hidden states along them,
computed once and cached on disk in resumable safetensors shards.

The frames come from a corpus the modality names (``Modality.heads_corpus``: text) or from the target's own
samples (``Modality.heads_prompts``: image, speech); either way the states are the ones the target records
in its own forward (``track_hidden`` / ``hidden``), the very states a self-drafter reads when it drafts.
Only the last layer's hidden state is cached (fp16): the target's logits are exactly its output head
applied to that state (the state is taken after the final norm), so the trainer recomputes them with one
matrix product instead of storing ``V`` numbers per token.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor


def cache_corpus(target, examples: Iterator[tuple[Any, Tensor]], folder: Path, key: dict, deadline: float,
                 shard: int = 16, bar=None) -> int:
    """``cache_sampled`` for a corpus (``Modality.heads_corpus``): ``examples`` yields ``(prompt, frames [S, K])``,
    read ``shard`` at a time by the target after their prompts (``states_along``); a resumed run skips the
    examples already cached."""
    def make(done: int):
        rest = itertools.islice(examples, done * shard, None)
        while chunk := list(itertools.islice(rest, shard)):
            frames = torch.stack([f for _, f in chunk])  # [b, S, K]
            lengths = torch.full((len(chunk),), frames.shape[1])
            yield from states_along(target, [p for p, _ in chunk], frames, lengths, T=frames.shape[1])

    return cache_sampled(make, folder, key, deadline, shard, bar)


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


# -- the target's hidden states along frames: a corpus's windows, or the target's own samples -------------
@torch.inference_mode()
def states_along(target, prompts: list, frames: Tensor, lengths: Tensor, T: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """Teacher-force the first ``T`` of ``frames [B, T', K]`` (``lengths [B]``; default ``T' - 1``: a generated
    run's last frame predicts past the run, and the context may end there) through the target after its
    prompts, reading the hidden states of that very forward (``track_hidden``): per row
    ``(frames [L, K], hidden [L, H])`` with hidden[t] the state after frame t (whose output head predicts
    frame t + 1)."""
    T = frames.shape[1] - 1 if T is None else T
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
    """The cache of sampled windows (and of a corpus's, ``cache_corpus``): shards of ``tokens [n, S, K]`` and ``hidden [n, S, H]`` (fp16),
    resumable when ``key`` matches; ``make_windows(shards_done)`` starts the window stream (a resumed run
    passes the shards already cached, so its samples are new ones)."""
    def batches(done: int):
        windows = make_windows(done)
        while got := [w for _, w in zip(range(shard), windows)]:
            yield (torch.stack([f for f, _ in got]), torch.stack([h for _, h in got]).to(torch.float16),
                   len(got) == shard)

    return write_shards(batches, folder, key, deadline, bar)


MOVED = {  # names this module had until the text corpus went through the modality registry (one release)
    "token_stream": "mmspec.text.corpus.token_stream", "windows": "mmspec.text.corpus.windows",
    "cache_states": "mmspec.heads.data.cache_corpus (the states from the target's own track_hidden / hidden)",
    "states_of": "mmspec.heads.data.states_along (the target's own track_hidden / hidden)",
}


def __getattr__(name: str):
    if name in MOVED:
        raise AttributeError(f"mmspec.heads.data.{name} was removed; use {MOVED[name]}")
    raise AttributeError(f"module 'mmspec.heads.data' has no attribute {name!r}")
