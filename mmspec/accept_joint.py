"""Joint-frame speculative sampling for frames of K codebooks (the ``joint`` accept rule in ``mmspec.accept``).

The K codebooks of one frame are independent given the past under the target, P(s) = prod_k p_k(s_k), and
under the drafter, Q(s) = prod_k q_k(s_k). The per-codebook rule (``speculative``) keeps a frame only when
every codebook passes its own test, with probability prod_k min(1, p_k / q_k). This rule tests the frame
as ONE token of the product space:

1. accept the drafted frame x with probability min(1, P(x) / Q(x)), which is never below the per-codebook
   probability (min(1, prod a_k) >= prod min(1, a_k));
2. at the first rejected frame, draw the frame from the joint residual R = norm((P - Q)+), exactly, by
   rejection sampling under an envelope that is easy to sample (below); after D accepted frames draw a
   bonus frame from P.

That is speculative sampling on the frame space, so each committed frame is distributed as P.

**Sampling the joint residual.** V^K frames cannot be enumerated. Thinning from P (s ~ P, kept with
probability (1 - Q(s) / P(s))+) is exact but needs 1 / TV(P, Q) draws on average, unbounded when P and Q
are close. Instead, P - Q telescopes over the codebooks,

    P(s) - Q(s) = sum_k  prod_{i<k} q_i(s_i) * (p_k - q_k)(s_k) * prod_{i>k} p_i(s_i),

so (P - Q)+ <= E(s) := sum_k prod_{i<k} q_i(s_i) * (p_k - q_k)+(s_k) * prod_{i>k} p_i(s_i). E is a mixture
of product distributions of total mass sum_k tv_k (tv_k = TV(p_k, q_k)): pick k with probability
proportional to tv_k, draw codebooks i < k from q_i, codebook k from norm((p_k - q_k)+), codebooks i > k
from p_i. A candidate s is kept with probability (P(s) - Q(s))+ / E(s) <= 1; a kept candidate is an
exact draw of R (rejection sampling). Each candidate is kept with probability TV(P, Q) / sum_k tv_k >=
1 / K, because the joint TV is at least every marginal's (max_k tv_k >= sum_k tv_k / K): at most K
candidates on average however small the residual. Candidates are drawn ``CANDIDATES_PER_CODEBOOK * K``
at a time; a round without a kept one (probability <= e^-8) draws another round, which is the same
exact rejection sampler continued, so no round count changes the distribution. When rounding leaves no
residual mass at all (P == Q in floating point), the frame is drawn from P.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .sampling import Sampler

CANDIDATES_PER_CODEBOOK = 8  # per round: a round fails with probability <= (1 - 1/K)^(8K) <= e^-8
MAX_ROUNDS = 1000  # more means the residual mass is lost to rounding (each round fails w.p. <= e^-8)

Residual = Callable[[Tensor, Tensor, Sampler], Tensor]


def verify(p: Tensor, q: Tensor, x: Tensor, sampler: Sampler, residual: Residual | None = None) -> tuple[Tensor, Tensor]:
    """Joint-frame test of a chain: ``p [B, D + 1, K, V]`` (target), ``q [B, D, K, V]`` (what ``x [B, D, K]`` was
    drawn from). Returns ``frame_ok [B, D]`` and ``final [B, D + 1, K]``: at each row's first rejected frame a
    draw of the joint residual, at index D a bonus frame from P (other entries unused by ``commit``)."""
    B, D, K = x.shape
    p_x = p[:, :D].gather(-1, x[..., None])[..., 0].double()  # [B, D, K]
    q_x = q.gather(-1, x[..., None])[..., 0].double()
    ratio = torch.where(q_x > 0, p_x / q_x.clamp(min=1e-300), 0.0).prod(-1)  # [B, D] P(x) / Q(x)
    frame_ok = sampler.uniform((B, D)).double() < ratio
    final = torch.cat([x, sampler.sample(p[:, D:])], dim=1)  # [B, D + 1, K]: the bonus at D
    first = frame_ok.long().cumprod(dim=1).sum(dim=1)  # [B] the first rejected frame (D: none)
    rows = (first < D).nonzero()[:, 0]
    if len(rows):
        at = first[rows]
        final[rows, at] = (residual or residual_frames)(p[rows, at], q[rows, at], sampler)
    return frame_ok, final


def residual_frames(p: Tensor, q: Tensor, sampler: Sampler) -> Tensor:
    """Exact draws of norm((P - Q)+) for ``p, q [R, K, V]`` (products over K): ``[R, K]`` (module docstring)."""
    p, q = p.double(), q.double()
    R, K, _ = p.shape
    tv = (p - q).clamp(min=0).sum(-1)  # [R, K]
    out = sampler.sample(p)  # [R, K]: kept where no residual mass is left (P == Q after rounding)
    todo = tv.sum(-1) > 0  # [R]
    for _ in range(MAX_ROUNDS):
        if not bool(todo.any()):
            return out
        rows = todo.nonzero()[:, 0]
        s, ok = envelope_round(p[rows], q[rows], tv[rows], CANDIDATES_PER_CODEBOOK * K, sampler)  # [r, M, K], [r, M]
        got = ok.any(-1)
        first = ok.long().argmax(-1)  # the first kept candidate
        out[rows[got]] = s[got, first[got]]
        todo[rows[got]] = False
    raise RuntimeError("no residual frame was kept in any round: the residual mass is lost to rounding")


def envelope_round(p: Tensor, q: Tensor, tv: Tensor, M: int, sampler: Sampler) -> tuple[Tensor, Tensor]:
    """``M`` candidates per row from the envelope E (``p, q [r, K, V]`` float64, ``tv [r, K]``) and whether each
    is kept: ``[r, M, K]``, ``[r, M]``."""
    r, K, V = p.shape
    residual = (p - q).clamp(min=0) / tv.clamp(min=1e-300)[..., None]  # [r, K, V] norm((p_k - q_k)+)
    k = sampler.sample((tv / tv.sum(-1, keepdim=True))[:, None].expand(r, M, K))  # [r, M] the term of E
    book = torch.arange(K, device=p.device)[None, None, :, None]  # [1, 1, K, 1]
    kk = k[..., None, None]  # [r, M, 1, 1]
    dist = torch.where(book < kk, q[:, None], torch.where(book == kk, residual[:, None], p[:, None]))  # [r, M, K, V]
    s = sampler.sample(dist)  # [r, M, K]
    ps = p[:, None].expand(r, M, K, V).gather(-1, s[..., None])[..., 0]  # [r, M, K]
    qs = q[:, None].expand(r, M, K, V).gather(-1, s[..., None])[..., 0]
    ones = torch.ones_like(ps[..., :1])
    q_before = torch.cat([ones, qs.cumprod(-1)[..., :-1]], dim=-1)  # prod_{i<k} q_i(s_i)
    p_after = torch.cat([ps.flip(-1).cumprod(-1)[..., :-1].flip(-1), ones], dim=-1)  # prod_{i>k} p_i(s_i)
    envelope = (q_before * (ps - qs).clamp(min=0) * p_after).sum(-1)  # [r, M] E(s)
    excess = (ps.prod(-1) - qs.prod(-1)).clamp(min=0)  # [r, M] (P(s) - Q(s))+
    return s, sampler.uniform((r, M)).double() * envelope < excess
