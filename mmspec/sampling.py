"""Warping (temperature, top-k, top-p) and sampling, identical for target, draft and residual.

A ``Sampler`` holds one ``Sampling`` and the randomness of one call: a ``torch.Generator`` seeded from
the call's seed, and, for reproducible decoding, noise keyed by (seed, row, position) so that a token's
randomness does not depend on how many tokens were verified together.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .types import Sampling, count

_MASK64 = (1 << 64) - 1


def warp(logits: Tensor, sampling: Sampling) -> Tensor:
    """Temperature, then top-k, then top-p; filtered entries become -inf. ``[..., V] -> [..., V]`` float32."""
    logits = logits.float()
    if sampling.greedy:
        return logits
    # Shift before dividing: the largest logit becomes 0, so a tiny temperature tends to greedy, never NaN
    # (a temperature below the dtype's smallest normal number divides by that number instead of by 0).
    temperature = max(sampling.temperature, torch.finfo(logits.dtype).tiny)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= sampling.top_p  # keep the first over p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def probs_of(logits: Tensor, sampling: Sampling) -> Tensor:
    """The distribution a token is sampled from: softmax of the warped logits (one-hot when greedy)."""
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return torch.softmax(warp(logits, sampling), dim=-1)


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


class Sampler:
    """The randomness and warping of one generation call.

    ``keyed`` selects reproducible decoding: every token is the Gumbel-max of its warped logits with
    noise drawn from a generator seeded by (seed, row, position), which is an exact sample of the
    target and does not depend on speculation. The row is the row's place in the batch the call started
    with: after ``select_rows`` drops rows, a kept row keeps its own noise.
    """

    def __init__(self, sampling: Sampling, seed: int = 0, device: torch.device | str = "cpu", keyed: bool = False):
        seed = count(seed, "seed", minimum=0)
        if seed >= 2**63:
            raise ValueError(f"seed must be below 2**63, got {seed}")
        self.sampling = sampling
        self.seed = seed
        self.device = torch.device(device)
        self.keyed = keyed
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.rows: list[int] | None = None  # each row's place in the starting batch (None: its own index)

    def select_rows(self, index: Tensor) -> None:
        """Keep the rows at ``index [B']`` (in that order) of the current batch: row i is now the row that was at
        ``index[i]``, and its keyed noise stays that of its place in the starting batch."""
        picked = index.tolist()
        self.rows = picked if self.rows is None else [self.rows[i] for i in picked]

    @property
    def greedy(self) -> bool:
        return self.sampling.greedy

    def warp(self, logits: Tensor) -> Tensor:
        return warp(logits, self.sampling)

    def probs(self, logits: Tensor) -> Tensor:
        return probs_of(logits, self.sampling)

    def sample(self, probs: Tensor) -> Tensor:
        """One token per distribution: ``[..., V] -> [...]``.

        Inverse-CDF sampling in float64 (a uniform draw located in the cumulative sum): exact, tokens of
        zero mass are never drawn, and on CPU it is about ten times cheaper than ``torch.multinomial``.
        """
        V = probs.shape[-1]
        cdf = probs.reshape(-1, V).double().cumsum(dim=-1)  # [N, V]
        u = torch.rand((cdf.shape[0], 1), generator=self.generator, device=cdf.device, dtype=torch.float64)
        index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=V - 1)  # [N, 1]
        return index.reshape(probs.shape[:-1])

    def uniform(self, shape) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def gumbel(self, positions: Tensor, K: int, V: int) -> Tensor:
        """Keyed Gumbel noise for the frames at ``positions [B, T]``: ``[B, T, K, V]``.

        One generator draw per (row, position), seeded by a hash of (seed, row, position), so the noise
        of a position is the same however the positions are grouped into forwards (or tree branches).
        """
        B, T = positions.shape
        gen = torch.Generator(device=self.device)
        noise: dict[tuple[int, int], Tensor] = {}
        key = list(range(B)) if self.rows is None else self.rows  # each row's place in the starting batch
        for b, row in enumerate(positions.tolist()):
            for p in row:
                if (b, p) not in noise:
                    gen.manual_seed(_mix(_mix(_mix(self.seed) ^ key[b]) ^ p))
                    noise[b, p] = torch.rand((K, V), generator=gen, device=self.device)
        u = torch.stack([noise[b, p] for b, row in enumerate(positions.tolist()) for p in row])
        u = u.reshape(B, T, K, V).clamp_(1e-20, 1.0 - 1e-7)
        return -torch.log(-torch.log(u))

    def keyed_choice(self, logits: Tensor, pos: Tensor) -> Tensor:
        """Gumbel-max of the warped ``logits [B, T, K, V]`` with keyed noise: ``[B, T, K]``. ``pos`` is the
        position of the first frame ``[B]`` (frames consecutive) or every frame's ``[B, T]``."""
        scores = self.warp(logits)
        if self.greedy:
            return scores.argmax(-1)
        B, T, K, V = scores.shape
        positions = pos[:, None] + torch.arange(T, device=pos.device) if pos.dim() == 1 else pos
        return (torch.log_softmax(scores, -1) + self.gumbel(positions, K, V)).argmax(-1)
