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
from torch import Tensor

from . import accept, tree
from .accept import Rule, as_rule
from .compaction import Rows, compacts
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
    compact: bool = True,
) -> Iterator[Step]:
    """Generate up to ``max_new_tokens`` frames per row, yielding each committed step.

    A frame is one token for text and image models and one code per codebook (K codes) for codec LMs.
    ``compact``: drop rows that have ended from the batch once half of it has (``mmspec.compaction``; only where
    the target and the drafter declare ``selects_rows``): every row's output is the same either way under greedy
    decoding and the reproducible rule (other sampling rules draw other, equally exact samples).
    """
    k, max_new_tokens, rule, seed = _check(target, drafter, k, max_new_tokens, rule, sampling, seed)
    if not isinstance(compact, bool):
        raise ValueError(f"compact must be True or False, got {compact!r}")
    _BUSY.add(target)
    try:
        yield from _steps(target, drafter, prompt, max_new_tokens, k, rule, sampling, seed, compact)
    finally:
        _BUSY.discard(target)


def _steps(target, drafter, prompt, max_new_tokens, k, rule, sampling, seed, compact) -> Iterator[Step]:
    # 1. Prefill the target (recording hidden states only for a self-drafter); the first frame comes from
    #    the target alone (a rule over an empty draft).
    if has_hidden(target):
        target.track_hidden(drafter is not None and bool(drafter.wants_hidden))
    logits = target.start(prompt, max_new_tokens)  # [B, 1, K, V]
    B, K = logits.shape[0], logits.shape[2]
    device = logits.device
    sampler = Sampler(sampling, seed, device, keyed=rule.keyed_noise)
    budget = min(max_new_tokens, target.max_frames - int(target.pos.max()))
    done = torch.zeros(B, dtype=torch.bool, device=device)
    made = torch.zeros(B, dtype=torch.long, device=device)  # frames committed per row
    lockstep, drafted = not rows_apart(target, drafter), False
    rows = Rows(B, device, compact and not lockstep and compacts(target, drafter))  # the rows still in the batch
    if drafter is not None:
        drafter.start(target, sampler, prompt, budget)
    draft = Draft(tokens=torch.zeros(B, 0, K, dtype=torch.long, device=device))
    verdict = rule(draft, logits, sampler, target.pos.clone())
    while True:
        # 5. Commit per row its accepted frames + 1 (lockstep: the batch minimum); stop rows at their end.
        moves = _moves(verdict, done, made, budget, lockstep)  # [B] frames each row's cache keeps
        step, ended = _commit(target, verdict, draft.size, moves, done)
        if drafter is not None:
            drafter.observe(step, logits)
        made += step.counts
        done |= ended | (made >= budget)
        yield rows.widen(step)
        finished = int(done.sum())  # the one sync per step
        if finished == done.shape[0]:
            return
        last = verdict.tokens.gather(1, (moves - 1).clamp(min=0)[:, None, None].expand(-1, 1, K)).clamp(min=0)
        if rows.due(finished):  # half of the batch has ended: drop those rows (they would ride along)
            keep = rows.drop(done, target, drafter, sampler)
            last, done, made = last[keep], done[keep], made[keep]
        # 2. Draft up to k frames after each row's newest committed frame.
        left = int((budget - made).masked_fill(done, 0).max())  # frames the furthest-behind row may still add
        draft = Draft(tokens=last[:, :0])
        if drafter is not None and left > 1:
            draft = _fit(target, drafter.propose(last, min(k, left - 1)), first=not drafted)
            drafted = True
        # 3. Verify: one target forward over [last, draft] (a tree: each node sees its ancestors only).
        pos = target.pos.clone() + 1  # position predicted by logits[:, 0]
        parents = _tree_of(target, draft)
        logits = target.forward(torch.cat([last, draft.tokens], dim=1), parents)  # [B, N + 1, K, V]
        # 4. Accept a prefix plus one recovered/bonus frame.
        verdict = rule(draft, logits, sampler, pos)


def _commit(target, verdict, N: int, moves: Tensor, done: Tensor) -> tuple[Step, Tensor]:
    """Commit ``moves [B]`` frames per row of a verify forward over ``[last, N nodes]`` (rows that had ended,
    ``done [B]``, commit nothing): the target keeps them; returns the step and which rows end in it ``[B]``."""
    B, n, device = moves.shape[0], int(moves.max()), moves.device
    frames = verdict.tokens[:, :n]  # [B, n, K]
    beyond = torch.arange(n, device=device)[None, :] >= moves[:, None]  # [B, n] past a row's count
    ended = (target.finished(frames.clamp(min=0)) & ~beyond).cumsum(dim=1) > 0  # [B, n]
    after_end = torch.cat([done[:, None].expand(B, 1), ended[:, :-1]], dim=1) | done[:, None] | beyond
    frames = frames.masked_fill(after_end[..., None], PAD)
    counts = moves.masked_fill(done, 0)  # [B] frames committed (0: a row that had ended)
    from_draft = torch.arange(n, device=device)[None, :] < verdict.n_accepted[:, None]
    path = None if verdict.path is None else verdict.path[:, : n - 1]  # [B, n - 1] committed nodes
    if path is not None:
        path = path.masked_fill(beyond[:, 1:], -1)  # -1 past each row's own count
    if N or bool((moves != 1).any()):  # cache held [last, nodes]: keep last + the committed path
        _keep(target, N, moves, path)
    step = Step(frames, from_draft & ~after_end, N, verdict.n_accepted.masked_fill(done, 0), target.pos.clone(), path,
                counts)
    return step, ended.any(dim=1)


def rows_apart(target: Target, drafter: Drafter | None) -> bool:
    """Whether each row may commit its own count per step: the target and the drafter both declare
    ``per_row_commits`` True (its cache masks a row's rejected slots; its ``observe`` reads ``Step.counts``).
    Anything that does not declare it runs in lockstep: every row commits the batch minimum."""
    parts = [target] if drafter is None else [target, drafter]
    return all(bool(getattr(p, "per_row_commits", False)) for p in parts)


def _moves(verdict, done: Tensor, made: Tensor, budget: int, lockstep: bool) -> Tensor:
    """Frames each row keeps this step ``[B]``: its accepted frames + 1, within the budget; 0 for an ended row.
    Lockstep: every row (ended ones too, so the cache moves as one) keeps the minimum over the rows still
    running (ended rows do not hold the batch back)."""
    counts = torch.minimum(verdict.n_accepted + 1, budget - made)  # [B]
    if lockstep:
        return counts.masked_fill(done, verdict.tokens.shape[1]).min().expand_as(counts).clone()
    return counts.masked_fill(done, 0)


def _fit(target: Target, draft: Draft, first: bool) -> Draft:
    """A tree that does not fit the context: a clear error at the run's first draft (the node budget is too
    large for this model and prompt); later (near the end of a fixed-length context, such as an image
    grid) its first nodes that fit, which are ancestor-closed because parents come before children."""
    if draft.parents is None:  # a chain: the loop's budget already keeps it inside the context
        return draft
    room = target.max_frames - int(target.pos.max()) - 1  # frames the verify forward may add after ``last``
    if draft.size <= room:
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


def _keep(target: Target, N: int, counts: Tensor, path) -> None:
    """After a verify forward over ``[last, N nodes]``: per row keep ``last`` and its first counts - 1 accepted
    nodes (``counts [B]``; 0: an ended row keeps nothing of it)."""
    start = target.pos - (N + 1)  # [B] frames before the verify forward
    if path is not None and _in_order(path):  # a tree whose accepted nodes lead it: kept as a chain, no gather
        path = None
    if path is None:  # a chain: the accepted nodes are the first ones
        target.keep(start + counts)
        return
    frames = torch.cat([path.new_zeros(path.shape[0], 1), path + 1], dim=1)  # [B, n] indices into [last, nodes]
    frames = frames.masked_fill(torch.arange(frames.shape[1], device=frames.device)[None] >= counts[:, None], -1)
    target.keep(start + counts, frames)


def _in_order(path: Tensor) -> bool:
    """Whether every row's committed nodes ``path [B, m]`` (-1 past its count) are nodes 0, 1, ... in order: the
    tree's first nodes, as a chain's would be (its draft order puts a parent before its children, so the
    accepted path often is its first branch). Such a path needs no gather: the frames already lie in order."""
    lead = torch.arange(path.shape[1], device=path.device)[None]  # [1, m]
    return bool(((path == lead) | (path < 0)).all())


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
    tokens, lengths = assemble(steps)
    gen = Generation(tokens=tokens, lengths=lengths, steps=steps, wall_s=wall)
    gen.outputs = target.decode(tokens, gen.lengths)
    return gen


def assemble(steps: list[Step]) -> tuple[Tensor, Tensor]:
    """Each row's committed frames from its own counts: ``tokens [B, T, K]`` (PAD after a row's end) and
    ``lengths [B]``. A step pads a row past its count and after its end with PAD, so a row's frames are its
    non-PAD frames in order."""
    frames = torch.cat([s.frames for s in steps], dim=1)  # [B, sum n, K]
    real = frames[..., 0] != PAD  # [B, sum n]
    lengths = real.sum(dim=1)  # [B]
    order = torch.sort((~real).long(), dim=1, stable=True).indices  # real frames first, in order
    tokens = frames.gather(1, order[..., None].expand_as(frames))[:, : int(lengths.max())]
    return tokens, lengths


def autoregressive(target: Target, prompt: Any, **kwargs) -> Generation:
    """The baseline: the same adapter, rule and loop with no drafter (one frame per target forward)."""
    kwargs.pop("k", None)
    return generate(target, None, prompt, **kwargs)


def synchronizer(device) -> Callable[[], None]:
    """A call that waits for queued GPU work on ``device``, so a timer measures it (a no-op off CUDA)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None
