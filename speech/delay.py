"""The delay pattern (MusicGen's), in one place for every codec LM adapter and the speech recipe.

A codec gives K codebooks per audio frame, ``codes [B, K, T]``. The LM instead predicts STEPS: step s
holds, for codebook k, the code of audio frame s - k (codebook k is shifted right by k steps and padded
with the model's pad id). So codebook k has not started at steps s < k, carries frame t at step t + k,
and after the last audio frame (``end`` frames) closes at step ``end + k``: the zoo LM writes its EOS there
and pads after, MusicGen pads from there on. Only audio frame t whose every codebook is committed
(t + K - 1 < committed steps) is a real frame: never drafts, padding or special ids reach the codec.

* ``apply_delay`` / ``revert_delay``: codes <-> delayed steps (training data, references).
* ``phases`` (``phases_at`` for a tree's steps): where each (step, codebook) is in that life cycle, for the adapters' logit constraints.
* ``committed_codes``: committed steps -> per row the codec codes of its complete frames (decoding).
"""
from __future__ import annotations

import torch
from torch import Tensor


def apply_delay(codes: Tensor, pad_id: int) -> Tensor:
    """``codes [B, K, T]`` -> ``[B, K, T + K - 1]`` with codebook k shifted right by k (``pad_id`` elsewhere)."""
    B, K, T = codes.shape
    out = codes.new_full((B, K, T + K - 1), pad_id)
    for k in range(K):
        out[:, k, k: k + T] = codes[:, k]
    return out


def revert_delay(delayed: Tensor) -> Tensor:
    """``delayed [B, K, T + K - 1]`` -> ``codes [B, K, T]``: the inverse of ``apply_delay``."""
    B, K, S = delayed.shape
    T = S - K + 1
    return torch.stack([delayed[:, k, k: k + T] for k in range(K)], dim=1)


def phases(first_step: int, T: int, K: int, end: int | Tensor, device) -> tuple[Tensor, Tensor, Tensor]:
    """For the steps ``first_step .. first_step + T - 1`` and codebooks ``0 .. K - 1``, with ``end`` audio
    frames (an int, or ``[B, 1, 1]`` per row): BoolTensors ``[T, K]`` (``[B, T, K]`` for a per-row end)

    * ``waiting``: s < k, codebook k has not started;
    * ``closing``: s == end + k, codebook k's first step after the last frame;
    * ``closed``: s > end + k.
    """
    s = torch.arange(first_step, first_step + T, device=device)[:, None]  # [T, 1]
    k = torch.arange(K, device=device)[None, :]  # [1, K]
    return s < k, s == end + k, s > end + k


def phases_at(steps: Tensor, K: int, end: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``phases`` at explicit step indices ``steps [B, T]`` (a token tree: a node predicts step
    ``first_step + depth - 1``), with ``end`` an int or per frame ``[B, T]``: BoolTensors ``[B, T, K]``."""
    s = steps[..., None]  # [B, T, 1]
    k = torch.arange(K, device=steps.device)  # [K]
    end = end[..., None] if isinstance(end, Tensor) else end
    return s < k, s == end + k, s > end + k


def committed_codes(frames: Tensor, lengths: Tensor, ends: list[int], codebook_size: int) -> list[Tensor]:
    """Committed steps ``frames [B, T, K]`` with ``lengths [B]`` -> per row the codes ``[K, T_b]`` of the
    audio frames t < ``ends[b]`` whose every codebook is committed (t + K - 1 < length). A code outside
    ``0 .. codebook_size - 1`` there means the stream is invalid: ValueError."""
    K, out = frames.shape[-1], []
    for b in range(frames.shape[0]):
        steps = frames[b, : int(lengths[b])]  # [n, K] committed steps only (no PAD)
        n_real = max(min(int(ends[b]), steps.shape[0] - K + 1), 0)
        codes = torch.stack([steps[k: k + n_real, k] for k in range(K)]) if n_real else steps.new_zeros(K, 0)
        if bool(((codes < 0) | (codes >= codebook_size)).any()):
            raise ValueError("committed frames hold special ids inside the audio; the stream is invalid")
        out.append(codes)  # [K, T_b]
    return out
