"""What the self-drafters share (``MedusaDrafter`` in ``medusa.py``, ``EagleDrafter`` in ``eagle.py``).

A self-drafter reads the target's own last hidden state (``HiddenTarget.hidden``) from the verify forward
that the loop already ran, never a second pass: after ``keep``, the state of the newest committed frame's
predecessor is the verify frame of the last committed node (a chain: frame ``n - 1``; a tree: the frame of
the last committed path node; the first step: the prefill's last frame). Its tokens are read through the
target's frozen output head. Under greedy rules a draft is the argmax (q = None); under sampling rules it
is sampled and q is kept (chains), so the rules, which verify with the target's own distribution, stay exact.
On a CPU the head is read with int8 weights, optionally on a reduced vocabulary (``mmspec.drafters.int8``):
both change only the guesses, never what the target accepts.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..protocols import has_hidden
from ..sampling import Sampler
from ..types import Step
from .int8 import Int8Copies, reading_head


def check(target, hidden_size: int, vocab: Tensor | None) -> None:
    """Refuse (ValueError) a target that heads of ``hidden_size`` (on the draft vocabulary ``vocab``, None:
    all ids) cannot read now: it lacks the hidden-state capability, recorded nothing during its prefill,
    its hidden size differs, or the vocabulary does not fit. Changes nothing."""
    if not has_hidden(target):
        raise ValueError(f"{type(target).__name__} does not expose its hidden states (track_hidden / hidden / "
                         "output_head / input_embeddings), so self-drafters cannot run on it")
    if not target.hidden_wanted:
        raise ValueError("the target recorded no hidden state during its prefill: generate through mmspec.stream "
                         "(it turns recording on for a drafter with wants_hidden), or call track_hidden(True) first")
    size = target.hidden().shape[-1]
    if size != hidden_size:
        raise ValueError(f"these heads were built for hidden size {hidden_size}, the target's is {size}")
    if vocab is not None and (target.num_codebooks != 1 or int(vocab.max()) >= target.vocab_size):
        raise ValueError(f"a draft vocabulary needs a single-codebook target with ids below {target.vocab_size}")


def head_of(target, vocab: Tensor | None, copies: Int8Copies) -> torch.nn.Module:
    """The set-up after ``check``: the module the drafter reads ``target``'s output head through (int8 on a
    CPU, kept in ``copies``; on the draft vocabulary ``vocab`` when given)."""
    rows = None if vocab is None else vocab.to(target.device)
    return reading_head(target.output_head(), rows, target.vocab_size, target.device.type == "cpu", copies)


def committed_states(target, step: Step) -> Tensor:
    """The verify forward's hidden states of the committed frames' predecessors, ``[B, n, H]``: entry j is the
    state whose output head gave committed frame j (the last entry: the state before the newest frame)."""
    h = target.hidden()  # [B, T, H] of the last forward (the prefill: T = 1)
    n = step.frames.shape[1]
    if step.path is None:
        return h[:, :n]
    index = torch.cat([step.path.new_zeros(step.path.shape[0], 1), step.path.clamp(min=0) + 1], dim=1)  # [B, n]
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))


def newest_state(target, step: Step) -> Tensor:
    """Per row, the verify forward's hidden state before its newest committed frame ``[B, H]`` (rows may have
    committed different counts: ``Step.counts``)."""
    h = committed_states(target, step)  # [B, n, H]
    return h.gather(1, step.newest()[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]


def read(head, x: Tensor, K: int) -> Tensor:
    """Logits ``[B, T, K, V]`` (float32) of features ``x [B, T, H]`` through the target's output head."""
    weight = next(head.parameters())
    logits = head(x.to(weight.dtype)).float()  # [B, T, K * V]
    return logits.view(*logits.shape[:-1], K, -1)


def choose(sampler: Sampler, logits: Tensor, pos: Tensor) -> tuple[Tensor, Tensor | None]:
    """Draft frames from ``logits [B, T, K, V]`` at positions ``pos [B]`` (first frame): tokens ``[B, T, K]``
    and the distribution they were sampled from (None: deterministic: greedy, or keyed noise)."""
    if sampler.greedy:
        return logits.argmax(-1), None
    if sampler.keyed:  # the target's own keyed noise: Gumbel coupling; that rule needs no q
        return sampler.keyed_choice(logits, pos), None
    q = sampler.probs(logits)
    return sampler.sample(q), q
