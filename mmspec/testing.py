"""ToyTarget: a tiny deterministic Target for tests and for drafters' unit checks.

Its next-frame logits depend on the two previous frames through fixed random tables, so it has real
context dependence, K codebooks with parallel heads, an optional EOS, and exact rollback (its "cache"
is the list of frames it was fed). ``perturbed`` makes a draft model with a related but different
distribution.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .types import check_frames


class ToyTarget:
    def __init__(
        self,
        vocab_size: int = 8,
        num_codebooks: int = 1,
        seed: int = 0,
        sharpness: float = 2.0,
        eos_id: int | None = None,
        max_frames: int = 512,
        tables: tuple[Tensor, Tensor] | None = None,
    ):
        self.vocab_size, self.num_codebooks, self.eos_id, self.max_frames = vocab_size, num_codebooks, eos_id, max_frames
        V, K = vocab_size, num_codebooks
        if tables is None:
            g = torch.Generator().manual_seed(seed)
            tables = (torch.randn(K, K, V, V, generator=g) * sharpness, torch.randn(K, K, V, V, generator=g) * sharpness / 2)
        self.w1, self.w2 = tables  # [K_prev, K, V_prev, V]: logits of codebook k from the previous frames
        self.device = torch.device("cpu")
        self.pos = torch.zeros(1, dtype=torch.long)
        self.forwards = 0

    def perturbed(self, noise: float = 1.0, seed: int = 1) -> "ToyTarget":
        g = torch.Generator().manual_seed(seed)
        w1 = self.w1 + noise * torch.randn(self.w1.shape, generator=g)
        w2 = self.w2 + noise * torch.randn(self.w2.shape, generator=g)
        return ToyTarget(self.vocab_size, self.num_codebooks, eos_id=self.eos_id, max_frames=self.max_frames, tables=(w1, w2))

    # -- Target protocol -------------------------------------------------------------------------
    def start(self, prompt: Tensor, max_new_tokens: int) -> Tensor:
        prompt = check_frames(prompt, "prompt")
        if prompt.shape[1] < 2:
            raise ValueError("ToyTarget prompts need at least 2 frames")
        if prompt.shape[1] >= self.max_frames:
            raise ValueError(f"prompt has {prompt.shape[1]} frames; the context holds {self.max_frames}")
        self.prompt = prompt
        self.history = prompt.clone()  # [B, S, K]
        self.pos = torch.full((prompt.shape[0],), prompt.shape[1], dtype=torch.long)
        self.forwards += 1
        return self._logits(self.history)[:, -1:]

    def prompt_frames(self) -> list[Tensor]:
        return list(self.prompt)

    def forward(self, frames: Tensor) -> Tensor:
        T = frames.shape[1]
        self.history = torch.cat([self.history, frames], dim=1)
        self.pos = self.pos + T
        self.forwards += 1
        return self._logits(self.history)[:, -T:]  # [B, T, K, V]

    def rollback(self, pos: Tensor) -> None:
        n = int(pos.max())
        assert bool((pos == n).all()), "ToyTarget keeps rows aligned"
        self.history = self.history[:, :n]
        self.pos = pos.clone()

    def finished(self, frames: Tensor) -> Tensor:
        if self.eos_id is None:
            return torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return frames[..., 0] == self.eos_id

    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        return [frames[b, : int(lengths[b])].tolist() for b in range(frames.shape[0])]

    def check_draft(self, draft) -> None:
        if not isinstance(draft, ToyTarget) or draft.vocab_size != self.vocab_size:
            raise ValueError("a ToyTarget drafts for a ToyTarget of the same vocabulary")

    # -- the model -------------------------------------------------------------------------------
    def _logits(self, history: Tensor) -> Tensor:
        """Logits predicting frame t + 1 from frames t and t - 1: ``[B, S, K, V]``."""
        prev1 = history  # [B, S, K]
        prev2 = torch.cat([history[:, :1], history[:, :-1]], dim=1)
        out = 0
        for j in range(self.num_codebooks):
            out = out + self.w1[j][:, prev1[..., j]].permute(1, 2, 0, 3) + self.w2[j][:, prev2[..., j]].permute(1, 2, 0, 3)
        return out  # [B, S, K, V]

    def distribution(self, prefix: Tensor, n: int) -> dict[tuple, float]:
        """Exact probability of every n-frame continuation of ``prefix [1, S, K]`` (small V, K, n only)."""
        import itertools

        probs = {(): 1.0}
        for _ in range(n):
            nxt = {}
            for seq, pr in probs.items():
                hist = torch.cat([prefix, torch.tensor(seq, dtype=torch.long).reshape(1, -1, self.num_codebooks)], 1)
                p = torch.softmax(self._logits(hist)[0, -1], -1)  # [K, V]
                for frame in itertools.product(range(self.vocab_size), repeat=self.num_codebooks):
                    pf = float(torch.prod(p[torch.arange(self.num_codebooks), torch.tensor(frame)]))
                    nxt[seq + (frame,)] = pr * pf
            probs = nxt
        return probs


def chi2_pvalue(counts, probs: dict, runs: int) -> float:
    """Pearson chi-square goodness of fit of ``counts`` (outcome -> n) to exact ``probs`` over ``runs``
    samples; outcomes expected fewer than 5 times are pooled into one bin. Returns the p-value."""
    stat, dof, pooled_obs, pooled_exp = 0.0, -1, 0.0, 0.0
    for outcome, pr in probs.items():
        e, o = pr * runs, counts.get(outcome, 0)
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
            continue
        stat, dof = stat + (o - e) ** 2 / e, dof + 1
    if pooled_exp > 0:
        stat, dof = stat + (pooled_obs - pooled_exp) ** 2 / pooled_exp, dof + 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)))
