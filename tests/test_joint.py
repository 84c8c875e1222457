"""The joint-frame accept rule for frames of K codebooks: exact frames (many rows of one step at once, and
the loop on ToyTarget), acceptance never below the per-codebook rule, and the negative control that must
fail (a residual drawn from the envelope without the rejection test: not normalised to (P - Q)+)."""
from __future__ import annotations

from collections import Counter
import itertools

import pytest
import torch

import mmspec
from mmspec import Draft, Sampler, Sampling, accept, accept_joint
from mmspec.drafters.coupled import CoupledJacobiDrafter
from mmspec.testing import ToyTarget, chi2_pvalue

HOT = Sampling(temperature=1.0)
K, V, ROWS = 3, 3, 30_000


def one_step(residual=None, seed=0):
    """One chain step of one drafted frame, for ROWS rows at once: fixed p [K, V] and q, x ~ q per row.
    Returns the committed first frames [ROWS, K], whether each was accepted, and p, q."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(1.5 * torch.randn(K, V, generator=g), -1)
    q = torch.softmax(1.5 * torch.randn(K, V, generator=g), -1)
    sampler = Sampler(HOT, seed=seed)
    x = sampler.sample(q.expand(ROWS, 1, K, V))  # [ROWS, 1, K]
    logits = torch.log(p).expand(ROWS, 2, K, V)  # the frame and the bonus frame both from p
    if residual is None:
        verdict = accept.joint(Draft(tokens=x, probs=q.expand(ROWS, 1, K, V)), logits, sampler, torch.zeros(ROWS))
        return verdict.tokens[:, 0], verdict.n_accepted == 1, p, q
    ok, final = accept_joint.verify(torch.softmax(logits, -1), q.expand(ROWS, 1, K, V), x, sampler, residual)
    return torch.where(ok[:, :1, None], x, final[:, :1])[:, 0], ok[:, 0], p, q


def frame_counts(frames):
    return Counter(tuple(f) for f in frames.tolist())


def product(p):
    return {s: float(torch.prod(p[torch.arange(K), torch.tensor(s)])) for s in itertools.product(range(V), repeat=K)}


def test_joint_frames_follow_the_target_and_accept_at_least_as_often_as_per_codebook():
    frames, accepted, p, q = one_step()
    assert chi2_pvalue(frame_counts(frames), product(p), ROWS) > 1e-3
    joint = float(torch.minimum(torch.tensor(list(product(p).values())), torch.tensor(list(product(q).values()))).sum())
    per_codebook = float(torch.minimum(p, q).sum(-1).prod())
    assert abs(float(accepted.double().mean()) - joint) < 0.01  # accepted with 1 - TV(P, Q)
    assert joint > per_codebook + 0.02


def _envelope_only(p, q, sampler):
    """NEGATIVE CONTROL: a candidate of the envelope E taken without the rejection test (E is not (P - Q)+)."""
    s, _ = accept_joint.envelope_round(p.double(), q.double(), (p - q).clamp(min=0).sum(-1).double(), 1, sampler)
    return s[:, 0]


def test_a_residual_without_its_rejection_test_is_caught():
    frames, _, p, _ = one_step(residual=_envelope_only)
    assert chi2_pvalue(frame_counts(frames), product(p), ROWS) < 1e-6


def test_the_exact_residual_through_verify_matches_the_rule():
    frames, _, p, _ = one_step(residual=accept_joint.residual_frames, seed=1)
    assert chi2_pvalue(frame_counts(frames), product(p), ROWS) > 1e-3


def test_the_residual_is_drawn_even_when_p_and_q_almost_agree():
    """Thinning from P would need ~1 / TV draws; the envelope needs <= K per frame on average."""
    p = torch.softmax(torch.randn(2, K, V, generator=torch.Generator().manual_seed(3)), -1).double()
    q = p.clone()
    q[:, 0] = 0.9999 * p[:, 0] + 0.0001 / V
    out = accept_joint.residual_frames(p, q, Sampler(HOT, seed=0))
    assert out.shape == (2, K)
    allowed = (p[:, 0] > q[:, 0])  # only codebook 0 differs: the residual's codebook 0 is where p > q
    assert bool(allowed.gather(-1, out[:, :1]).all())


def test_greedy_joint_is_greedy_decoding():
    target = ToyTarget(vocab_size=6, num_codebooks=2, seed=3)
    p = torch.randint(0, 6, (2, 3, 2), generator=torch.Generator().manual_seed(0))
    base = mmspec.autoregressive(target, p, max_new_tokens=20)
    gen = mmspec.generate(target, mmspec.JacobiDrafter("random"), p, max_new_tokens=20, k=4, rule=accept.joint)
    assert torch.equal(gen.tokens, base.tokens)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model", "coupled"])
def test_joint_rule_in_the_loop_matches_the_target(which):
    target = ToyTarget(vocab_size=3, num_codebooks=2, seed=5, sharpness=1.5)
    draft = target.perturbed(1.5, seed=9)
    make = {"model": lambda: mmspec.ModelDrafter(draft), "coupled": lambda: CoupledJacobiDrafter("pad")}[which]
    p, n, runs = torch.randint(0, 3, (1, 4, 2), generator=torch.Generator().manual_seed(1)), 3, 2500
    counts = Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, make(), p, max_new_tokens=n, k=3, rule=accept.joint, sampling=HOT, seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    assert chi2_pvalue(counts, target.distribution(p, n), runs) > 1e-3
