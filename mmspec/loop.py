"""The one draft -> verify -> accept loop for every modality.

``stream`` yields one ``Step`` per target forward, ``generate`` collects them into a ``Generation``,
and ``autoregressive`` is the same loop with no drafter, so every comparison runs the same adapter, the
same rule and the same bookkeeping. The call order the loop guarantees is in ``mmspec.protocols``.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Iterator

import torch

from . import accept, tree
from .accept import Rule, as_rule
from .protocols import DRAFTER, Drafter, Target, has_hidden
from .sampling import Sampler
from .types import PAD, Draft, Generation, Sampling, Step, count

_BUSY: "weakref.WeakSet" = weakref.WeakSet()  # targets inside a running generation (one at a time each)


def _check(target, drafter, k, max_new_tokens, rule, sampling, seed) -> tuple[int, int, Rule, int]:
    """Validate the arguments of ``stream`` before any model runs; returns ``(k, max_new_tokens, rule, seed)``."""
    if not isinstance(target, Target):
        raise ValueError(f"target must be an mmspec Target (e.g. mmspec.text.TextTarget), got {type(target).__name__}")
    if drafter is not None and not isinstance(drafter, Drafter):
        raise ValueError(f"drafter must {DRAFTER} (or be None), got {type(drafter).__name__}")
    k = count(k, "k (drafted frames per step)")
    max_new_tokens = count(max_new_tokens, "max_new_tokens")
    seed = count(seed, "seed", minimum=0)
    if seed >= 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    rule = as_rule(rule)
    if not isinstance(sampling, Sampling):
        raise ValueError(f"sampling must be an mmspec.Sampling, got {type(sampling).__name__}")
    if rule is accept.greedy and not sampling.greedy:
        raise ValueError(
            "rule 'greedy' decodes deterministically; use temperature 0, or a sampling rule "
            f"({', '.join(r for r in accept.RULES if r != 'greedy')}) with temperature {sampling.temperature}"
        )
    if target in _BUSY:
        raise ValueError("this target is already generating (one generation at a time per target: finish or close "
                         "the other stream first, or load a second copy)")
    return k, max_new_tokens, rule, seed


def stream(
    target: Target,
    drafter: Drafter | None,
    prompt: Any,
    *,
    max_new_tokens: int = 64,
    k: int = 4,
    rule: Rule = accept.greedy,
    sampling: Sampling = Sampling(),
    seed: int = 0,
) -> Iterator[Step]:
    """Generate up to ``max_new_tokens`` frames per row, yielding each committed step.

    A frame is one token for text and image models and one code per codebook (K codes) for codec LMs.
    """
    k, max_new_tokens, rule, seed = _check(target, drafter, k, max_new_tokens, rule, sampling, seed)
    _BUSY.add(target)
    try:
        yield from _steps(target, drafter, prompt, max_new_tokens, k, rule, sampling, seed)
    finally:
        _BUSY.discard(target)


def _steps(target, drafter, prompt, max_new_tokens, k, rule, sampling, seed) -> Iterator[Step]:
    # 1. Prefill the target (recording hidden states only for a self-drafter); the first frame comes from
    #    the target alone (a rule over an empty draft).
    if has_hidden(target):
        target.track_hidden(drafter is not None and bool(drafter.wants_hidden))
    logits = target.start(prompt, max_new_tokens)  # [B, 1, K, V]
    B, K = logits.shape[0], logits.shape[2]
    device = logits.device
    sampler = Sampler(sampling, seed, device, keyed=rule.keyed_noise)
    budget = min(max_new_tokens, target.max_frames - int(target.pos.max()))
    empty = Draft(tokens=torch.zeros(B, 0, K, dtype=torch.long, device=device))
    done = torch.zeros(B, dtype=torch.bool, device=device)
    made = 0
    if drafter is not None:
        drafter.start(target, sampler, prompt, budget)
    verdict, draft = rule(empty, logits, sampler, target.pos.clone()), empty
    while True:
        # 5. Commit n = (batch minimum of accepted) + 1 frames; stop rows at their end; roll back caches.
        live = verdict.n_accepted.masked_fill(done, verdict.tokens.shape[1])  # ended rows do not hold the batch back
        n = min(int(live.min()) + 1, budget - made)  # the one sync per step
        frames = verdict.tokens[:, :n]  # [B, n, K]
        ended = target.finished(frames.clamp(min=0)).cumsum(dim=1) > 0  # [B, n]; PAD only in ended rows
        after_end = torch.cat([done[:, None].expand(B, 1), ended[:, :-1]], dim=1) | done[:, None]
        frames = frames.masked_fill(after_end[..., None], PAD)
        from_draft = torch.arange(n, device=device)[None, :] < verdict.n_accepted[:, None]
        path = None if verdict.path is None else verdict.path[:, : n - 1]  # [B, n - 1] committed nodes
        if draft.size:  # cache held [last, nodes]; keep last and the committed part of the accepted path
            _keep(target, draft.size, n, path)
        step = Step(frames, from_draft & ~after_end, draft.size, verdict.n_accepted, target.pos.clone(), path)
        if drafter is not None:
            drafter.observe(step, logits)
        made += n
        done |= ended[:, -1]
        yield step
        if made >= budget or bool(done.all()):
            return
        # 2. Draft up to k frames after the newest committed frame.
        last = verdict.tokens[:, n - 1 : n].clamp(min=0)  # [B, 1, K]
        draft = empty
        if drafter is not None and budget - made > 1:
            draft = _fit(target, drafter.propose(last, min(k, budget - made - 1)), first=made == 1)
        # 3. Verify: one target forward over [last, draft] (a tree: each node sees its ancestors only).
        pos = target.pos.clone() + 1  # position predicted by logits[:, 0]
        parents = _tree_of(target, draft)
        logits = target.forward(torch.cat([last, draft.tokens], dim=1), parents)  # [B, N + 1, K, V]
        # 4. Accept a prefix plus one recovered/bonus frame.
        verdict = rule(draft, logits, sampler, pos)


def _fit(target: Target, draft: Draft, first: bool) -> Draft:
    """A tree that does not fit the context: a clear error at the run's first draft (the node budget is too
    large for this model and prompt); later (near the end of a fixed-length context, such as an image
    grid) its first nodes that fit, which are ancestor-closed because parents come before children."""
    room = target.max_frames - int(target.pos.max()) - 1  # frames the verify forward may add after ``last``
    if draft.parents is None or draft.size <= room:
        return draft
    if first:
        raise ValueError(f"a tree of {draft.size} nodes does not fit the model's context ({target.max_frames} frames) "
                         "after the prompt; lower the node budget (--tree)")
    room = max(room, 0)
    parents = draft.parents[..., :room]
    return Draft(tokens=draft.tokens[:, :room], probs=None if draft.probs is None else draft.probs[:, :room],
                 parents=parents)


def _tree_of(target: Target, draft: Draft):
    """The verify frames' parents for a tree draft (None for a chain)."""
    if draft.parents is None or draft.is_chain:
        return None
    tree.check(draft.parents, draft.size, draft.tokens.shape[0])
    return tree.forward_parents(draft.parents, draft.size)


def _keep(target: Target, N: int, n: int, path) -> None:
    """After a verify forward over ``[last, N nodes]``: keep ``last`` and the first n - 1 accepted nodes."""
    start = target.pos - (N + 1)  # [B] frames before the verify forward
    if path is None:  # a chain: the accepted nodes are the first ones
        target.keep(start + n)
        return
    frames = torch.cat([torch.zeros_like(path[:, :1]), path + 1], dim=1)  # [B, n] indices into [last, nodes]
    target.keep(start + n, frames)


def generate(target: Target, drafter: Drafter | None, prompt: Any, **kwargs) -> Generation:
    """Run ``stream`` to the end and collect the committed frames, the steps and the wall time."""
    if not isinstance(target, Target):
        raise ValueError(f"target must be an mmspec Target (e.g. mmspec.text.TextTarget), got {type(target).__name__}")
    sync = synchronizer(target.device)
    sync()
    t0 = time.perf_counter()
    steps = list(stream(target, drafter, prompt, **kwargs))
    sync()
    wall = time.perf_counter() - t0
    tokens = torch.cat([s.frames for s in steps], dim=1)  # [B, T, K]
    lengths = (tokens[..., 0] != PAD).sum(dim=1)  # [B]
    tokens = tokens[:, : int(lengths.max())]  # a step may run past the last row's end
    gen = Generation(tokens=tokens, lengths=lengths, steps=steps, wall_s=wall)
    gen.outputs = target.decode(tokens, gen.lengths)
    return gen


def autoregressive(target: Target, prompt: Any, **kwargs) -> Generation:
    """The baseline: the same adapter, rule and loop with no drafter (one frame per target forward)."""
    kwargs.pop("k", None)
    return generate(target, None, prompt, **kwargs)


def synchronizer(device) -> Callable[[], None]:
    """A call that waits for queued GPU work on ``device``, so a timer measures it (a no-op off CUDA)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None
