"""LOSSY relaxed acceptance for the fine codebooks of a codec frame (tolerance beta).

Fine (residual) codebooks carry little perceptual information, so rejecting a plausible fine code
wastes a whole step. This rule accepts drafted token x of codebook k with

    u < min(1, p(x) / q(x)) + beta   for k >= exact_codebooks (default: every codebook but the coarse one),
    u < min(1, p(x) / q(x))          for the exact codebooks,

and only if x is in the target's support (finite warped, constrained logits: a forced delay pad, an EOS
or a top-k cut is never overridden). Rejections resample from norm(max(0, p - q)) and the bonus from p,
as in ``mmspec.accept.speculative``. At temperature 0 p is the argmax one-hot: then beta is the chance
that a valid non-argmax fine code is kept.

LOSSY, with a bound. For one relaxed codebook at one step, the output distribution r differs from p
only by extra mass on tokens the draft over-proposes (q > p): there r(x) <= p(x) + beta * q(x), while
tokens with p >= q get at most p(x). So TV(r, p) <= beta * q({x: q(x) > p(x)}) <= beta per relaxed
codebook and step; the codebooks of a step are independent given the past, so a frame is within
(K - exact_codebooks) * beta of the target in total variation, and T frames within T * (K - exact) * beta
(a union bound). Exact codebooks stay exact given the past. beta = 0 is ``speculative`` (lossless).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from mmspec.accept import Rule, make, rejection
from mmspec.sampling import Sampler
from mmspec.types import Draft, Verdict


def relaxed(draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor, *, beta: float = 0.1,
            exact_codebooks: int = 1) -> Verdict:
    """LOSSY: speculative sampling with tolerance ``beta`` on codebooks >= ``exact_codebooks`` (see module)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    support = torch.isfinite(sampler.warp(target_logits[:, : draft.size]))  # [B, D, K, V]
    K = draft.tokens.shape[-1]

    def tolerant(p, q, x, p_x, q_x):  # [B, D, K]: min(1, p/q) + beta on relaxed codebooks, 0 off support
        ratio = (p_x / q_x).clamp(max=1.0)
        tol = torch.where(torch.arange(K, device=x.device) >= exact_codebooks, beta, 0.0).to(p.dtype)  # [K]
        return torch.where(support.gather(-1, x[..., None]).squeeze(-1), ratio + tol, torch.zeros_like(ratio))

    return rejection(draft, target_logits, sampler, tolerant)


def relaxed_rule(beta: float = 0.1, exact_codebooks: int = 1) -> Rule:
    """``relaxed`` with its tolerance bound in: a rule with the standard signature for ``generate``."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    bound = (f"total variation <= (K - {exact_codebooks}) * beta = (K - {exact_codebooks}) * {beta:g} per frame "
             f"from the target; codebooks < {exact_codebooks} exact")
    return make(functools.partial(relaxed, beta=beta, exact_codebooks=exact_codebooks), "relaxed", lossless=False,
                bound=bound, build=lambda target=None, **o: relaxed_rule(**o), options=("beta",))
