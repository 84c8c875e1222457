"""LANTERN relaxed acceptance for image tokens (Jang et al. 2024, "LANTERN: Accelerating Visual
Autoregressive Models with Relaxed Speculative Decoding"). LOSSY, with a per-step total-variation bound.

Many VQ codes are near-equivalent visually, so the target's mass is spread over latent neighbours and a
drafted code is often rejected although a neighbour of it was likely. LANTERN credits a drafted code with
the target mass of its nearest codebook neighbours:

    p~(x) = p(x) + sum of p over x's nearest neighbours, taken in order while their cumulative mass <= delta

and accepts x with min(1, p~(x) / q(x)). The bound delta is the paper's: the relaxed target that x is
tested against (p with the taken neighbours' mass moved onto x) is within total variation delta of p.
The committed frame's own distortion is at most sum over codes y of min(delta, max(0, q(y) - p(y))),
and never more than TV(p, q); it can exceed delta when several drafted codes each gain neighbour mass
(tests/test_image.py measures it). The neighbour table (per code, its ``k_nb`` nearest other codes
by Euclidean distance of the VQ codebook embeddings) is computed once per codebook and cached in the
user's cache folder.
"""
from __future__ import annotations

import hashlib
import logging
import os

import torch
from torch import Tensor

from mmspec import accept
from mmspec.sampling import Sampler
from mmspec.types import Draft, Verdict

log = logging.getLogger("mmspec.image.lantern")


def neighbour_table(codebook: Tensor, k_nb: int) -> Tensor:
    """Per code, the ``k_nb`` nearest OTHER codes sorted by codebook distance: ``[V, E] -> LongTensor [V, k_nb]``."""
    V = codebook.shape[0]
    if not isinstance(k_nb, int) or not 1 <= k_nb < V:
        raise ValueError(f"k_nb (LANTERN neighbours per code) must be an integer in [1, {V - 1}], got {k_nb!r}")
    dist = torch.cdist(codebook.float(), codebook.float())  # [V, V]
    dist.fill_diagonal_(float("inf"))  # a code is not its own neighbour
    return dist.topk(k_nb, dim=-1, largest=False).indices  # [V, k_nb], nearest first


def cache_dir() -> str:
    """The default folder for computed tables: ``~/.cache/mmspec/lantern`` (the user's, never the package);
    ``neighbours_for(folder=...)`` (``--lantern-cache`` on the command line) names another."""
    return os.path.join(os.path.expanduser("~"), ".cache", "mmspec", "lantern")


def neighbours_for(target, k_nb: int = 1000, folder: str | None = None) -> Tensor:
    """The neighbour table of ``target.codebook()``, cached on disk in ``folder`` (default ``cache_dir()``) under
    a hash of the codebook, so a table is computed once per codebook. ``k_nb`` is capped at V - 1."""
    book = target.codebook()  # [V, E]
    k_nb = min(k_nb, book.shape[0] - 1)
    digest = hashlib.sha256(book.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    file = os.path.join(cache_dir() if folder is None else os.path.expanduser(str(folder)), f"{digest}_k{k_nb}.pt")
    if os.path.exists(file):
        table = torch.load(file, map_location="cpu", weights_only=True)
        if table.shape == (book.shape[0], k_nb):
            return table
    table = neighbour_table(book.cpu(), k_nb)
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        tmp = f"{file}.{os.getpid()}.tmp"
        torch.save(table, tmp)
        os.replace(tmp, file)
    except OSError as err:  # a read-only cache only costs the recomputation
        log.info("LANTERN table not cached (%s)", err)
    return table


def lantern_rule(neighbours: Tensor, delta: float = 0.1):
    """Build the LOSSY LANTERN accept rule over ``neighbours [V, k_nb]`` with relaxation ``delta``."""
    if not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise ValueError(f"LANTERN delta must be in [0, 1), got {delta!r}")
    log.info("LANTERN relaxed acceptance: LOSSY; relaxed target within TV delta = %g of p per drafted token "
             "(k_nb = %d); committed-frame TV <= sum_y min(delta, (q - p)+(y))", delta, neighbours.shape[1])

    def lantern(draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor) -> Verdict:
        """LOSSY LANTERN relaxed speculative sampling (Jang et al. 2024); per-token TV bound delta.

        For draft x ~ q with target p (same warping): p~(x) = p(x) + the target mass of x's nearest
        codebook neighbours, taken in order while their cumulative mass <= delta; accept x with
        min(1, p~(x) / q(x)). At the first rejection sample norm(max(0, p - q)) (p itself when that is
        empty) and stop; if all are accepted sample a bonus from p. A deterministic draft is q = one-hot.
        Per step, the relaxed target of each drafted token is within TV delta of p; the committed frame is
        within sum_y min(delta, (q - p)+(y)) <= TV(p, q) of p. With delta = 0 this is exactly
        ``accept.speculative`` (same random draws, same tokens).
        Greedy sampling falls back to ``accept.greedy``.
        """
        if sampler.greedy:
            return accept.greedy(draft, target_logits, sampler, pos)
        def relaxed_ratio(p, q, x, p_x, q_x):  # [B, D, K]: p~(x) / q(x)
            nb = neighbours.to(x.device)[x]  # [B, D, K, k_nb]
            p_nb = p.gather(-1, nb)  # [B, D, K, k_nb]
            extra = (p_nb * (p_nb.cumsum(-1) <= delta)).sum(-1)  # nearest neighbours' mass while <= delta
            return (p_x + extra) / q_x

        return accept.rejection(draft, target_logits, sampler, relaxed_ratio)

    bound = (f"relaxed target within total variation delta = {delta:g} of p per drafted token; committed frame "
             f"within sum_y min(delta, (q - p)+(y)) <= TV(p, q)")
    return accept.make(lantern, "lantern", lossless=False, bound=bound,
                       build=lambda target, **o: lantern_rule(neighbours, **o), options=("delta",))
