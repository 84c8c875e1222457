"""Accept rules: one function each, one signature.

    rule(draft, target_logits, sampler, pos) -> Verdict

``draft.tokens [B, D, K]`` were proposed after the last committed frame; ``target_logits [B, D + 1, K, V]``
come from one target forward over ``[last, draft]``, so ``target_logits[:, j]`` predicts the frame at
position ``pos + j``. A rule returns the accepted draft prefix, then one recovered (after a rejection)
or bonus (all accepted) frame, then PAD. With D = 0 every rule is plain decoding of one frame, which is
how the autoregressive baseline runs through the same code.

Inside rules, ``p`` is the target's distribution and ``q`` the draft's, both after the same warping.

Every rule is a ``Rule``: the function plus its ``RuleSpec`` (name, lossless or not, whether it needs
keyed noise, the stated bound of a lossy rule). ``RULES`` maps the core's names to specs; a modality
adds its own (``Modality.rules``), and the CLI, the app and the bench read "lossless" and the bound from
the spec, never from a table of their own.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from . import accept_joint, accept_tree
from .sampling import Sampler
from .types import PAD, Draft, Verdict

RuleFn = Callable[[Draft, Tensor, Sampler, Tensor], Verdict]


@dataclass(frozen=True)
class RuleSpec:
    """What a named accept rule is. ``build(target, **options) -> Rule`` makes it for a loaded target (rules
    that need the model, such as LANTERN's codebook neighbours, or options such as a tolerance); ``options``
    names the options it reads. A lossy rule states its ``bound``."""

    name: str
    lossless: bool
    build: Callable[..., "Rule"]
    keyed_noise: bool = False
    bound: str | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.lossless and not self.bound:
            raise ValueError(f"lossy rule {self.name!r} must state its bound")


class Rule:
    """An accept rule: ``rule(draft, target_logits, sampler, pos) -> Verdict``, carrying its ``spec``."""

    def __init__(self, fn: RuleFn, spec: RuleSpec | None = None):
        self.fn, self.spec = fn, spec
        self.__doc__ = (fn.func if isinstance(fn, functools.partial) else fn).__doc__

    def __call__(self, draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor) -> Verdict:
        return self.fn(draft, target_logits, sampler, pos)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def lossless(self) -> bool:
        return self.spec.lossless

    @property
    def keyed_noise(self) -> bool:
        return self.spec.keyed_noise

    def __repr__(self) -> str:
        return f"Rule({self.spec.name!r}, lossless={self.spec.lossless})"


def make(fn: RuleFn, name: str, *, lossless: bool, keyed_noise: bool = False, bound: str | None = None,
         build: Callable[..., Rule] | None = None, options: tuple[str, ...] = ()) -> Rule:
    """Wrap ``fn`` as a ``Rule``; ``build`` defaults to "this same rule for every target"."""
    rule = Rule(fn)
    rule.spec = RuleSpec(name, lossless, build or (lambda target=None, **_: rule), keyed_noise, bound, options)
    return rule


def as_rule(rule: Any) -> Rule:
    """A ``Rule`` as is; a plain function with the rule signature becomes an unnamed rule of unknown exactness."""
    if isinstance(rule, Rule):
        return rule
    if not callable(rule):
        allowed = ", ".join(RULES)
        raise ValueError(f"rule must be an accept rule such as mmspec.accept.greedy (named: {allowed}), got {rule!r}")
    name = getattr(rule, "__name__", type(rule).__name__)
    return make(rule, name, lossless=False, bound="unknown: a user rule states none")


def commit(draft_tokens: Tensor, frame_ok: Tensor, final: Tensor) -> Verdict:
    """Accepted prefix of ``draft_tokens [B, D, K]`` (``frame_ok [B, D]``), then ``final[b, n_b]``, then PAD."""
    B, D, K = draft_tokens.shape
    n_accepted = frame_ok.long().cumprod(dim=1).sum(dim=1)  # [B] (zeros when D = 0)
    index = torch.arange(D + 1, device=final.device)[None, :]  # [1, D + 1]
    padded = torch.cat([draft_tokens, final[:, D:]], dim=1)  # [B, D + 1, K]
    tokens = torch.where((index < n_accepted[:, None])[..., None], padded, final)
    tokens = tokens.masked_fill((index > n_accepted[:, None])[..., None], PAD)
    return Verdict(tokens=tokens, n_accepted=n_accepted)


def _prefix_match(draft: Draft, choice: Tensor) -> Verdict:
    """Accept while the draft equals ``choice [B, D + 1, K]``; then commit ``choice`` (recovered/bonus)."""
    D = draft.size
    frame_ok = (draft.tokens == choice[:, :D]).all(dim=-1)  # [B, D]
    return commit(draft.tokens, frame_ok, choice)


def _greedy(draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor) -> Verdict:
    """Lossless for greedy decoding: accept while each draft frame equals the target's argmax, then append
    the target's argmax. The output is identical to greedy autoregressive decoding. On a tree: follow
    the child equal to the target's argmax as deep as it goes (``accept_tree.match``)."""
    if not draft.is_chain:
        return accept_tree.match(draft, target_logits.argmax(dim=-1))
    return _prefix_match(draft, target_logits.argmax(dim=-1))


def _reproducible(draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor) -> Verdict:
    """Lossless, and seed-reproducible: every frame is the Gumbel-max of the target's warped logits with
    noise keyed by (seed, row, position). That is an exact sample of the target, and since the noise of a
    position never depends on the draft, the output with the same seed is identical token for token with
    and without speculation. Drafters that sample with the same keyed noise (``sampler.keyed``) are
    accepted far more often than independent ones (Gumbel coupling). On a tree every frame takes the
    keyed choice at its own position (siblings share it) and the matching child is followed."""
    if not draft.is_chain:
        return accept_tree.match(draft, sampler.keyed_choice(target_logits, accept_tree.frame_positions(draft, pos)))
    return _prefix_match(draft, sampler.keyed_choice(target_logits, pos))



def rejection(draft: Draft, target_logits: Tensor, sampler: Sampler, accept_prob: Callable[..., Tensor]) -> Verdict:
    """Speculative sampling with a pluggable acceptance probability: the shared body of ``speculative``
    and of relaxed (lossy) variants such as LANTERN or codebook tolerance.

    ``accept_prob(p, q, x, p_x, q_x) -> [B, D, K]`` gets the drafted positions' ``p, q [B, D, K, V]``,
    the draft ``x [B, D, K]`` and its masses ``p_x, q_x [B, D, K]``; a token is accepted when a uniform
    draw falls below it. At the first rejection the token is drawn from norm(max(0, p - q)) (p itself
    when that is empty); after D acceptances a bonus frame is drawn from p_{D+1}. A deterministic draft
    (``probs is None``) is q = one-hot. In the first frame with a rejection, codebooks that were
    accepted keep their draft token. A tree is verified by multi-candidate speculative sampling
    (``accept_tree.multi_candidate``): siblings are tried in turn against the residual.
    """
    if not draft.is_chain:
        relaxed = None if accept_prob is _exact_ratio else accept_prob  # the exact rule also verifies joint frames
        return accept_tree.multi_candidate(draft, sampler.probs(target_logits), sampler, relaxed)
    p = sampler.probs(target_logits)  # [B, D + 1, K, V]
    D = draft.size
    x = draft.tokens  # [B, D, K]
    if draft.probs is None:
        q = torch.nn.functional.one_hot(x, p.shape[-1]).to(p.dtype)  # [B, D, K, V]
    else:
        q = draft.probs.to(p.dtype)
    # 1. Accept each drafted token with its acceptance probability.
    p_x = p[:, :D].gather(-1, x[..., None]).squeeze(-1)  # [B, D, K]
    q_x = q.gather(-1, x[..., None]).squeeze(-1)  # [B, D, K]
    ok = sampler.uniform(p_x.shape) < accept_prob(p[:, :D], q, x, p_x, q_x)  # [B, D, K]
    # 2. Residual distributions norm(max(0, p - q)) for every drafted position, p itself for the bonus.
    residual = (p[:, :D] - q).clamp_(min=0)  # [B, D, K, V]
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p[:, :D])
    fresh = sampler.sample(torch.cat([residual, p[:, D:]], dim=1))  # [B, D + 1, K]
    # 3. In the first frame with a rejection, accepted codebooks keep their draft token.
    final = torch.cat([torch.where(ok, x, fresh[:, :D]), fresh[:, D:]], dim=1)  # [B, D + 1, K]
    return commit(x, ok.all(dim=-1), final)


def _speculative(draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor) -> Verdict:
    """Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    Each draft token x ~ q is accepted with probability min(1, p(x) / q(x)); at the first rejection the
    token is drawn from norm(max(0, p - q)); if all D frames are accepted a bonus frame is drawn from
    p_{D+1}. A deterministic draft (``probs is None``) is q = one-hot: accept with p(x), else sample p
    without x. With K codebooks from parallel heads, the codebooks of one frame are independent given
    the past, so each is accepted or resampled on its own and the frame is an exact sample; a frame with
    any rejected codebook ends the step. Greedy sampling (temperature 0) falls back to ``greedy``.
    """
    if sampler.greedy:
        return _greedy(draft, target_logits, sampler, pos)
    return rejection(draft, target_logits, sampler, _exact_ratio)


def _joint(draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor) -> Verdict:
    """Lossless joint-frame speculative sampling for frames of K codebooks (``mmspec.accept_joint``).

    A drafted frame x is accepted whole with probability min(1, prod_k p_k(x_k) / q_k(x_k)), never less
    often than ``speculative`` accepts all its codebooks; at the first rejected frame the frame is an
    exact draw of the joint residual norm((P - Q)+) (rejection sampling under an envelope, at most K
    candidates on average); after D accepted frames a bonus frame is drawn from p. With K = 1 this is
    ``speculative``'s distribution. Trees take ``speculative``'s tree rule (joint frames of deterministic
    siblings already); greedy sampling falls back to ``greedy``.
    """
    if sampler.greedy:
        return _greedy(draft, target_logits, sampler, pos)
    p = sampler.probs(target_logits)  # [B, D + 1, K, V]
    if not draft.is_chain:
        return accept_tree.multi_candidate(draft, p, sampler)
    x = draft.tokens  # [B, D, K]
    q = torch.nn.functional.one_hot(x, p.shape[-1]).to(p.dtype) if draft.probs is None else draft.probs.to(p.dtype)
    frame_ok, final = accept_joint.verify(p, q, x, sampler)  # [B, D], [B, D + 1, K]
    return commit(x, frame_ok, final)


def _exact_ratio(p, q, x, p_x, q_x):
    """min(1, p(x) / q(x)) (the uniform draw is below 1 anyway): the exact acceptance probability."""
    return p_x / q_x


def _typical(
    draft: Draft, target_logits: Tensor, sampler: Sampler, pos: Tensor, *, epsilon: float = 0.09, delta: float = 0.3
) -> Verdict:
    """LOSSY typical acceptance (Medusa, Cai et al. 2024): accept x if p(x) > min(epsilon, delta * exp(-H(p))).

    The output is not distributed as the target's: a token with enough target mass is kept even when
    sampling would often have chosen another. The recovered/bonus frame is sampled from p (argmax when
    greedy). ``typical_rule(epsilon=..., delta=...)`` builds it with other thresholds.
    """
    p = sampler.probs(target_logits)  # [B, D + 1, K, V]
    D = draft.size
    entropy = -(p * torch.log(p.clamp(min=1e-30))).sum(-1)  # [B, D + 1, K]
    threshold = torch.minimum(torch.full_like(entropy, epsilon), delta * torch.exp(-entropy))
    final = target_logits.argmax(-1) if sampler.greedy else sampler.sample(p)  # [B, D + 1, K]
    if not draft.is_chain:
        return accept_tree.typical(draft, p, threshold, final)
    p_x = p[:, :D].gather(-1, draft.tokens[..., None]).squeeze(-1)  # [B, D, K]
    frame_ok = (p_x > threshold[:, :D]).all(dim=-1)  # [B, D]
    return commit(draft.tokens, frame_ok, final)


def typical_rule(epsilon: float = 0.09, delta: float = 0.3) -> Rule:
    """``typical`` with other thresholds (LOSSY; see ``typical``)."""
    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"typical {name} must be a number in [0, 1], got {value!r}")
    return make(functools.partial(_typical, epsilon=epsilon, delta=delta), "typical", lossless=False,
                bound=TYPICAL_BOUND, build=lambda target=None, **o: typical_rule(**o), options=("epsilon", "delta"))


TYPICAL_BOUND = ("none in distribution: keeps any drafted token with p(x) > min(epsilon, delta * exp(-H(p))); "
                 "greedy output is identical to greedy decoding")

greedy = make(_greedy, "greedy", lossless=True)
speculative = make(_speculative, "speculative", lossless=True)
reproducible = make(_reproducible, "reproducible", lossless=True, keyed_noise=True)  # the loop keys the noise
joint = make(_joint, "joint", lossless=True)
typical = typical_rule()

RULES: dict[str, RuleSpec] = {r.name: r.spec for r in (greedy, speculative, reproducible, joint, typical)}
"""The core's named rules; a modality adds its own through ``Modality.rules``."""


def spec_of(name: str, extra: dict[str, RuleSpec] | None = None) -> RuleSpec:
    """The spec of a named rule: the core's, or one of ``extra`` (a modality's rules)."""
    specs = {**RULES, **(extra or {})}
    if name not in specs:
        raise ValueError(f"unknown rule {name!r}; allowed: {', '.join(specs)}")
    return specs[name]
