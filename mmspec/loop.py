"""The one draft -> verify -> accept loop for every modality.

``decode`` yields one ``Step`` per target forward (for streaming), ``generate`` collects them into a
``Generation``, and ``autoregressive`` is the same loop with no drafter, so every comparison runs the
same adapter, the same rule and the same bookkeeping.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import torch

from . import accept
from .protocols import Drafter, Target
from .sampling import Sampler
from .types import PAD, Draft, Generation, Sampling, Step

Rule = Callable[..., Any]


def _check(target: Target, k: int, max_new_tokens: int, rule: Rule, sampling: Sampling, drafter) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (drafted frames per step) must be an integer >= 1, got {k!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not callable(rule):
        raise ValueError(f"rule must be an accept rule function such as accept.greedy, got {rule!r}")
    if not isinstance(sampling, Sampling):
        raise ValueError(f"sampling must be an mmspec.Sampling, got {type(sampling).__name__}")
    if rule is accept.greedy and not sampling.greedy:
        raise ValueError(
            "rule 'greedy' decodes deterministically; use temperature 0, or a sampling rule "
            f"({', '.join(r for r in accept.RULES if r != 'greedy')}) with temperature {sampling.temperature}"
        )
    if drafter is not None and not isinstance(drafter, Drafter):
        raise ValueError(f"drafter must implement start/propose/observe, got {type(drafter).__name__}")


def decode(
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
    """Generate up to ``max_new_tokens`` frames per row, yielding each committed step."""
    _check(target, k, max_new_tokens, rule, sampling, drafter)
    # 1. Prefill the target; the first frame comes from the target alone (a rule over an empty draft).
    logits = target.start(prompt, max_new_tokens)  # [B, 1, K, V]
    B, K = logits.shape[0], logits.shape[2]
    device = logits.device
    sampler = Sampler(sampling, seed, device, keyed=getattr(rule, "keyed_noise", False))
    budget = min(max_new_tokens, target.max_frames - int(target.pos.max()))
    empty = Draft(tokens=torch.zeros(B, 0, K, dtype=torch.long, device=device))
    done = torch.zeros(B, dtype=torch.bool, device=device)
    made, forwards = 0, 1
    if drafter is not None:
        drafter.start(target, sampler)
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
        step = Step(frames, from_draft & ~after_end, draft.size, verdict.n_accepted, forwards)
        if draft.size:  # cache held [last, draft]; keep last and the accepted prefix of the batch
            target.rollback(target.pos - (draft.size + 1) + n)
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
            draft = drafter.propose(last, min(k, budget - made - 1))
        # 3. Verify: one target forward over [last, draft].
        pos = target.pos.clone() + 1  # position predicted by logits[:, 0]
        logits = target.forward(torch.cat([last, draft.tokens], dim=1))  # [B, D + 1, K, V]
        forwards = 1
        # 4. Accept a prefix plus one recovered/bonus frame.
        verdict = rule(draft, logits, sampler, pos)


def generate(target: Target, drafter: Drafter | None, prompt: Any, **kwargs) -> Generation:
    """Run ``decode`` to the end and collect the committed frames, the steps and the wall time."""
    sync = synchronizer(getattr(target, "device", "cpu"))
    sync()
    t0 = time.perf_counter()
    steps = list(decode(target, drafter, prompt, **kwargs))
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
