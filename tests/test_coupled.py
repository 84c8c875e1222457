"""Coupled Jacobi drafts (maximal and Gumbel coupling) and proactive trees (SJD-PAC) on ToyTarget:
greedy equivalence, exact distributions over several steps, and the negative controls that must fail
(storing the OLD proposal for kept guesses; keeping the longest accepted path of a proactive tree)."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

import mmspec
from mmspec import Sampler, Sampling, accept, accept_tree, tree
from mmspec.drafters.coupled import CoupledJacobiDrafter, maximal
from mmspec.drafters.proactive import ProactiveDrafter
from mmspec.testing import ToyTarget, chi2_pvalue

RUNS = 2500
HOT = Sampling(temperature=1.0)


def prompt(B=1, K=1, L=3, seed=0, vocab=4):
    return torch.randint(0, vocab, (B, L, K), generator=torch.Generator().manual_seed(seed))


def drafters(init="random"):
    return {"maximal": lambda: CoupledJacobiDrafter(init), "gumbel": lambda: CoupledJacobiDrafter(init, "gumbel"),
            "proactive": lambda: ProactiveDrafter(init)}


def iid_target(V=3, sharpness=1.0) -> ToyTarget:
    """A target whose next-token distribution barely depends on the context, so a kept guess is tested
    against nearly the distribution it was coupled to: where storing the old proposal is most biased."""
    w1 = torch.tensor([sharpness, 0.0, -sharpness])[None, None, None, :V].expand(1, 1, V, V).clone()
    w1 += 0.3 * torch.randn(1, 1, V, V, generator=torch.Generator().manual_seed(0))
    return ToyTarget(vocab_size=V, tables=(w1, torch.zeros(1, 1, V, V)))


def cyclic_target(V=3, sharpness=1.0) -> ToyTarget:
    """A target whose next token strongly depends on the previous one (mostly the next id, cyclically), so
    which sibling a path takes decides how deep it can go: where keeping the longest path is most biased."""
    w1 = sharpness * torch.eye(V).roll(1, dims=1)[None, None]  # [1, 1, V, V]: prev -> prev + 1
    return ToyTarget(vocab_size=V, tables=(w1, torch.zeros(1, 1, V, V)))


def empirical(target, make, p, n, k=4, rule=accept.speculative, runs=RUNS):
    counts = Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, make(), p, max_new_tokens=n, k=k, rule=rule, sampling=HOT, seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    return counts


class StaleProposal(CoupledJacobiDrafter):
    """NEGATIVE CONTROL: keeps the OLD proposal q for the guesses the coupling kept (as one public scheduler
    does); a kept guess is no longer distributed as q, so the output is biased."""

    def couple(self, x, q, p, positions):
        y, stored = super().couple(x, q, p, positions)
        kept = (y[:, :-1] == x)[..., None]  # [B, W - 1, K, 1]
        return y, torch.cat([torch.where(kept, q, stored[:, :-1]), stored[:, -1:]], dim=1)


# -- the coupling itself ----------------------------------------------------------------------------

def test_maximal_coupling_is_a_sample_of_p_equal_to_x_as_often_as_possible():
    g = torch.Generator().manual_seed(0)
    p, q = torch.softmax(torch.randn(6, generator=g), -1), torch.softmax(torch.randn(6, generator=g), -1)
    sampler, N = Sampler(HOT, seed=1), 200_000
    x = sampler.sample(q.expand(N, 1, 6))  # [N, 1] drawn from q
    y = maximal(sampler, x, q.expand(N, 1, 6), p.expand(N, 1, 6))
    freq = torch.bincount(y[:, 0], minlength=6).double() / N
    assert torch.allclose(freq, p.double(), atol=4e-3)  # y ~ p
    same = (y == x).double().mean()
    assert abs(float(same) - float(torch.minimum(p, q).sum())) < 4e-3  # P(y = x) = 1 - TV(p, q)


# -- greedy: Jacobi decoding -----------------------------------------------------------------------

@pytest.mark.parametrize("K, B", [(1, 1), (1, 2), (2, 2)])
def test_greedy_coupled_drafts_reproduce_greedy_decoding(K, B):
    target = ToyTarget(vocab_size=6, num_codebooks=K, seed=3, eos_id=5 if B == 2 else None)
    p = prompt(B, K, vocab=6)
    base = mmspec.autoregressive(target, p, max_new_tokens=30)
    for name, make in drafters("pad").items():
        gen = mmspec.generate(target, make(), p, max_new_tokens=30, k=5)
        assert torch.equal(gen.tokens, base.tokens), name
        assert gen.stats["steps"] <= base.stats["steps"], name


def test_reproducible_rule_gives_the_keyed_samples():
    target = ToyTarget(vocab_size=6, seed=4)
    kw = dict(max_new_tokens=20, rule=accept.reproducible, sampling=HOT, seed=3)
    base = mmspec.autoregressive(target, prompt(vocab=6), **kw)
    for name, make in drafters().items():
        assert torch.equal(mmspec.generate(target, make(), prompt(vocab=6), k=4, **kw).tokens, base.tokens), name


# -- sampling: the target's distribution, over several steps -----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("which, init", [("maximal", "pad"), ("maximal", "random"), ("gumbel", "pad"), ("proactive", "pad")])
def test_coupled_drafts_match_the_target(which, init):
    target = ToyTarget(vocab_size=3, seed=5, sharpness=1.5)
    p, n = prompt(vocab=3), 5
    counts = empirical(target, drafters(init)[which], p, n)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("which", ["maximal", "gumbel", "proactive"])
def test_coupled_drafts_match_the_negative_controls_targets(which):
    """The targets on which the controls below fail: context-free (old proposal) and cyclic (longest path)."""
    target = cyclic_target() if which == "proactive" else iid_target()
    p, n = torch.zeros(1, 3, 1, dtype=torch.long), 5
    counts = empirical(target, drafters("pad")[which], p, n)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) > 1e-3


@pytest.mark.slow
def test_coupled_codebooks_match_the_target():
    target = ToyTarget(vocab_size=3, num_codebooks=2, seed=5, sharpness=1.5)
    p, n = prompt(K=2, vocab=3), 3
    counts = empirical(target, drafters("pad")["maximal"], p, n, k=3)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) > 1e-3


@pytest.mark.slow
def test_storing_the_old_proposal_is_caught():
    target = iid_target()
    p, n = torch.zeros(1, 3, 1, dtype=torch.long), 5
    counts = empirical(target, lambda: StaleProposal("pad"), p, n)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) < 1e-6


def _longest(draft, target_logits, sampler, pos):
    """NEGATIVE CONTROL: every node tested on its own with min(1, p / q) against its parent frame, and the
    deepest path whose nodes all passed is kept (instead of the first accepted sibling, level by level)."""
    B, N, _ = draft.tokens.shape
    p = sampler.probs(target_logits)  # [B, N + 1, 1, V]
    parents = tree.per_row(draft.parents, B, N, draft.tokens.device)
    frame = (parents + 1)[..., None, None].expand(B, N, 1, p.shape[-1])
    p_x = p.gather(1, frame).gather(-1, draft.tokens[..., None])[..., 0, 0]  # [B, N]
    q_x = draft.probs.gather(-1, draft.tokens[..., None])[..., 0, 0]
    node = accept_tree.deepest(parents, sampler.uniform(p_x.shape) * q_x < p_x)
    final = sampler.sample(p.gather(1, (node + 1)[:, None, None, None].expand(B, 1, 1, p.shape[-1]))[:, 0])
    return accept_tree._verdict(draft, parents, node, final)


@pytest.mark.slow
def test_keeping_the_longest_path_of_a_proactive_tree_is_caught():
    target = cyclic_target()
    p, n = torch.zeros(1, 3, 1, dtype=torch.long), 5
    longest = accept.make(lambda d, lg, s, pos: (accept.speculative if d.is_chain else _longest)(d, lg, s, pos),
                          "longest", lossless=False, bound="none: a negative control")
    counts = empirical(target, lambda: ProactiveDrafter("pad"), p, n, rule=longest)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) < 1e-6


# -- shape of the proactive tree, speed-up, bad input -------------------------------------------------

def test_proactive_tree_branches_the_first_positions_and_chains_the_rest():
    target = ToyTarget(vocab_size=6, seed=3, sharpness=1.0)
    gen = mmspec.generate(target, ProactiveDrafter("pad", width=3, depth=2), prompt(vocab=6), max_new_tokens=30, k=6,
                          rule=accept.speculative, sampling=HOT, seed=0)
    drafted = {s.n_drafted for s in gen.steps[1:]}
    assert 6 + 2 + 2 + 3 * 2 in drafted  # the chain, 2 more roots, 2 more under chain node 0, 3 under each new root


def test_coupling_accepts_more_than_plain_sjd():
    target = ToyTarget(vocab_size=6, seed=3, sharpness=1.0)
    kw = dict(max_new_tokens=120, k=8, rule=accept.speculative, sampling=HOT)

    def per_forward(make):
        return sum(mmspec.generate(target, make(), prompt(vocab=6), seed=s, **kw).stats["mean_accepted"] for s in range(3))

    assert per_forward(lambda: CoupledJacobiDrafter("pad")) > 1.15 * per_forward(lambda: mmspec.JacobiDrafter("pad"))


def test_bad_coupling_options():
    with pytest.raises(ValueError, match="coupling must be one of maximal, gumbel"):
        CoupledJacobiDrafter(coupling="optimal")
    with pytest.raises(ValueError, match="width"):
        ProactiveDrafter(width=1)
    target = ToyTarget(vocab_size=3, num_codebooks=2, seed=5)
    with pytest.raises(ValueError, match="frames of one codebook"):
        mmspec.generate(target, ProactiveDrafter(), prompt(K=2, vocab=3), max_new_tokens=4, sampling=HOT,
                        rule=accept.speculative)


# -- recursive rejection sampling of siblings drawn without replacement (accept_tree.multi_candidate) ---

def _siblings_step(stated_iid: bool, rows=12_000, V=4, width=2):
    """One tree level of ``width`` siblings drawn WITHOUT replacement from q, for many rows at once; each
    sibling's stated proposal is q without the earlier siblings, renormalised (or q itself: the control).
    Returns the committed frames [rows] and p."""
    p, q = torch.tensor([0.1, 0.4, 0.3, 0.2]), torch.tensor([0.7, 0.05, 0.1, 0.15])  # q's favourite is p's least
    sampler = Sampler(HOT, seed=4)
    kids, props, rest = [], [], q.expand(rows, 1, V)
    for _ in range(width):
        kids.append(sampler.sample(rest))  # [rows, 1]
        props.append(q.expand(rows, 1, V) if stated_iid else rest)
        rest = rest.scatter(-1, kids[-1][..., None], 0.0)
        rest = rest / rest.sum(-1, keepdim=True)
    draft = mmspec.Draft(tokens=torch.stack(kids, 1), probs=torch.stack(props, 1), parents=torch.full((width,), -1))
    verdict = accept.speculative(draft, torch.log(p).expand(rows, width + 1, 1, V), sampler, torch.zeros(rows))
    return verdict.tokens[:, 0, 0], p


def test_siblings_without_replacement_are_verified_by_recursive_rejection_sampling():
    frames, p = _siblings_step(stated_iid=False)
    counts = Counter(frames.tolist())
    assert chi2_pvalue(counts, dict(enumerate(p.tolist())), len(frames)) > 1e-3


def test_siblings_without_replacement_stated_as_iid_are_caught():
    frames, p = _siblings_step(stated_iid=True)
    assert chi2_pvalue(Counter(frames.tolist()), dict(enumerate(p.tolist())), len(frames)) < 1e-6
