"""The core on ToyTarget: equivalence, exact distributions, reproducibility, rules and bad input."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

import mmspec
from mmspec import Draft, Sampler, Sampling, accept
from mmspec.sampling import warp
from mmspec.testing import ToyTarget, chi2_pvalue

V = 4


def prompt(B=1, K=1, L=3, seed=0, vocab=V):
    return torch.randint(0, vocab, (B, L, K), generator=torch.Generator().manual_seed(seed))


def all_drafters(target):
    return {
        "model": mmspec.ModelDrafter(target.perturbed(1.0)),
        "prompt-lookup": mmspec.PromptLookupDrafter(),
        "jacobi-random": mmspec.JacobiDrafter("random"),
        "jacobi-pad": mmspec.JacobiDrafter("pad"),
        "jacobi-repeat": mmspec.JacobiDrafter("repeat"),
        "lookahead": mmspec.LookaheadDrafter(),
    }


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("B", [1, 2])
def test_greedy_equivalence_every_drafter(K, B):
    target = ToyTarget(vocab_size=6, num_codebooks=K, seed=3, eos_id=5 if B == 2 else None)
    p = prompt(B, K)
    base = mmspec.autoregressive(target, p, max_new_tokens=40)
    for name, drafter in all_drafters(target).items():
        for k in (1, 3, 6):
            gen = mmspec.generate(target, drafter, p, max_new_tokens=40, k=k)
            assert torch.equal(gen.tokens, base.tokens), (name, k)
            assert gen.stats["steps"] <= base.stats["steps"], (name, k)


def test_jacobi_never_takes_more_steps_and_a_perfect_draft_takes_few():
    target = ToyTarget(vocab_size=6, seed=1, sharpness=4.0)
    base = mmspec.autoregressive(target, prompt(), max_new_tokens=30)
    for init in ("random", "pad", "repeat"):
        gen = mmspec.generate(target, mmspec.JacobiDrafter(init), prompt(), max_new_tokens=30, k=5)
        assert torch.equal(gen.tokens, base.tokens) and gen.stats["steps"] <= base.stats["steps"], init

    def oracle(seq, n, shift=0):  # the n frames after seq (new frames so far + current guesses), from the answer
        out = torch.zeros(seq.shape[0], n, seq.shape[2], dtype=torch.long)
        known = base.tokens[:, seq.shape[1]: seq.shape[1] + n]
        out[:, : known.shape[1]] = (known + shift) % 6
        return out

    perfect = mmspec.generate(target, mmspec.JacobiDrafter(oracle), prompt(), max_new_tokens=30, k=5)
    assert torch.equal(perfect.tokens, base.tokens)
    assert perfect.stats["acceptance_rate"] == 1.0 and perfect.stats["steps"] == 1 + 29 // 6 + (29 % 6 > 0)
    wrong = mmspec.generate(target, mmspec.JacobiDrafter(lambda seq, n: oracle(seq, n, shift=1)), prompt(),
                            max_new_tokens=30, k=5)  # negative control: every init guess off by one
    assert torch.equal(wrong.tokens, base.tokens) and wrong.stats["steps"] > perfect.stats["steps"] + 3


def test_stats_are_consistent():
    target = ToyTarget(vocab_size=6, seed=2)
    gen = mmspec.generate(target, mmspec.PromptLookupDrafter(), prompt(), max_new_tokens=25, k=4)
    s = gen.stats
    assert s["new_tokens"] == 25 == sum(s["accepted_per_step"])
    assert s["steps"] == len(gen.steps) == target.forwards  # one target forward per step, the prefill included
    assert s["mean_accepted"] == pytest.approx(25 / s["steps"])
    assert 0 <= s["acceptance_rate"] <= 1 and s["tokens_per_s"] > 0


# -- distributions -------------------------------------------------------------------------------

def exact(target, p, n):
    return target.distribution(p, n)


def empirical(target, drafter_fn, p, n, runs, rule, sampling, k=3):
    counts = Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, drafter_fn(), p, max_new_tokens=n, k=k, rule=rule, sampling=sampling, seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    return counts




class LyingDrafter(mmspec.ModelDrafter):
    """Samples from its model but reports a different q: the contract speculative sampling relies on."""

    def propose(self, last, k):
        draft = super().propose(last, k)
        return Draft(tokens=draft.tokens, probs=torch.full_like(draft.probs, 1.0 / draft.probs.shape[-1]))


RUNS = 2500


@pytest.mark.slow
@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("which", ["model", "jacobi", "prompt-lookup"])
def test_speculative_sampling_matches_the_target(K, which):
    target = ToyTarget(vocab_size=3 if K == 2 else V, num_codebooks=K, seed=5, sharpness=1.5)
    draft = target.perturbed(1.5, seed=9)
    make = {"model": lambda: mmspec.ModelDrafter(draft), "jacobi": lambda: mmspec.JacobiDrafter("random"),
            "prompt-lookup": lambda: mmspec.PromptLookupDrafter(max_ngram=1)}[which]
    p, n = prompt(K=K, L=4, seed=1, vocab=target.vocab_size), 3 if K == 1 else 2
    counts = empirical(target, make, p, n, RUNS, accept.speculative, Sampling(temperature=1.0))
    assert chi2_pvalue(counts, exact(target, p, n), RUNS) > 1e-3


@pytest.mark.slow
def test_a_wrong_q_is_caught():
    target = ToyTarget(vocab_size=V, seed=5, sharpness=0.7)
    draft = target.perturbed(3.0, seed=9)
    p, n = prompt(L=4, seed=1), 3
    counts = empirical(target, lambda: LyingDrafter(draft), p, n, RUNS, accept.speculative, Sampling(temperature=1.0))
    assert chi2_pvalue(counts, exact(target, p, n), RUNS) < 1e-6


@pytest.mark.slow
def test_warped_sampling_matches_the_warped_target():
    """Top-k applied to p and q alike: the output follows the top-k-filtered target."""
    target = ToyTarget(vocab_size=V, seed=6, sharpness=1.0)
    sampling = Sampling(temperature=0.8, top_k=3)
    p, n = prompt(L=4, seed=2), 2
    warped = ToyTarget(vocab_size=V, tables=(target.w1, target.w2))
    warped._logits = lambda h: warp(target._logits(h), sampling)
    counts = empirical(target, lambda: mmspec.ModelDrafter(target.perturbed(1.0)), p, n, RUNS, accept.speculative, sampling)
    assert chi2_pvalue(counts, exact(warped, p, n), RUNS) > 1e-3


@pytest.mark.slow
def test_reproducible_is_exact_and_identical_with_and_without_speculation():
    target = ToyTarget(vocab_size=V, seed=5, sharpness=1.5)
    p, n = prompt(L=4, seed=1), 3
    counts = Counter()
    for seed in range(RUNS):
        kw = dict(max_new_tokens=n, rule=accept.reproducible, sampling=Sampling(temperature=1.0), seed=seed)
        base = mmspec.autoregressive(target, p, **kw)
        if seed < 200:
            for drafter in (mmspec.ModelDrafter(target.perturbed(1.0)), mmspec.JacobiDrafter(), mmspec.LookaheadDrafter()):
                assert torch.equal(mmspec.generate(target, drafter, p, k=3, **kw).tokens, base.tokens)
        counts[tuple(tuple(f) for f in base.tokens[0].tolist())] += 1
    assert chi2_pvalue(counts, exact(target, p, n), RUNS) > 1e-3


def test_reproducible_rows_and_batches():
    target = ToyTarget(vocab_size=6, num_codebooks=2, seed=4)
    kw = dict(max_new_tokens=20, rule=accept.reproducible, sampling=Sampling(temperature=1.0, top_p=0.9), seed=11)
    base = mmspec.autoregressive(target, prompt(2, 2), **kw)
    for drafter in all_drafters(target).values():
        assert torch.equal(mmspec.generate(target, drafter, prompt(2, 2), k=4, **kw).tokens, base.tokens)
    other = mmspec.autoregressive(target, prompt(2, 2), **{**kw, "seed": 12})
    assert not torch.equal(other.tokens, base.tokens)
    alone = mmspec.generate(target, mmspec.JacobiDrafter(), prompt(2, 2)[:1], k=4, **kw)
    assert torch.equal(alone.tokens, base.tokens[:1])  # a row's output does not depend on the batch around it
    twins = mmspec.autoregressive(target, prompt(2, 2)[:1].expand(2, -1, -1).contiguous(), **kw)
    assert not torch.equal(twins.tokens[0], twins.tokens[1])  # the noise is keyed by row: one prompt, two samples


class OtherNoise(mmspec.ModelDrafter):
    """The same draft model sampled with another seed's keyed noise: the same q, uncoupled from the target."""

    def start(self, target, sampler, prompt, max_new_tokens):
        other = Sampler(sampler.sampling, seed=sampler.seed + 1, device=sampler.device, keyed=sampler.keyed)
        super().start(target, other, prompt, max_new_tokens)


def test_coupled_model_draft_is_accepted_more_often_under_reproducible():
    """Under the reproducible rule the draft model samples with the target's keyed noise (Gumbel coupling), so
    its draft is accepted about as often as under classic speculative sampling; the same draft with other
    noise (the negative control) rarely is. The output is the reproducible autoregressive one either way."""
    target = ToyTarget(vocab_size=8, seed=4, sharpness=1.0)
    draft = target.perturbed(0.3)
    rates = {"coupled": [], "uncoupled": [], "classic": []}
    for seed in range(4):
        kw = dict(max_new_tokens=60, sampling=Sampling(temperature=1.0), seed=seed)
        base = mmspec.autoregressive(target, prompt(), rule=accept.reproducible, **kw)
        for name, drafter, rule in (("coupled", mmspec.ModelDrafter(draft), accept.reproducible),
                                    ("uncoupled", OtherNoise(draft), accept.reproducible),
                                    ("classic", mmspec.ModelDrafter(draft), accept.speculative)):
            gen = mmspec.generate(target, drafter, prompt(), k=4, rule=rule, **kw)
            rates[name].append(gen.stats["acceptance_rate"])
            assert rule is accept.speculative or torch.equal(gen.tokens, base.tokens), (name, seed)
    coupled, uncoupled, classic = (sum(r) / len(r) for r in rates.values())
    assert coupled > 0.6 and coupled > 3 * uncoupled and coupled > 0.8 * classic, rates


# -- rules ---------------------------------------------------------------------------------------

def test_rules_on_an_empty_draft_give_one_frame():
    logits = torch.randn(3, 1, 2, 5)
    sampler = Sampler(Sampling(temperature=1.0), seed=0)
    for name, spec in accept.RULES.items():
        rule = spec.build(None)
        assert rule.name == name and rule.lossless == spec.lossless
        s = sampler if name != "greedy" else Sampler(Sampling(), 0)
        v = rule(Draft(tokens=torch.zeros(3, 0, 2, dtype=torch.long)), logits, s, torch.zeros(3, dtype=torch.long))
        assert v.tokens.shape == (3, 1, 2) and v.n_accepted.tolist() == [0, 0, 0]
        assert bool((v.tokens >= 0).all())


def test_greedy_rule_accepts_the_matching_prefix():
    logits = torch.full((2, 4, 1, 5), -1.0)
    best = torch.tensor([[1, 2, 3, 4], [1, 0, 3, 4]])
    logits.scatter_(-1, best[..., None, None], 5.0)
    draft = Draft(tokens=torch.tensor([[1, 2, 3], [1, 2, 3]])[..., None])
    v = accept.greedy(draft, logits, Sampler(Sampling()), torch.zeros(2, dtype=torch.long))
    assert v.n_accepted.tolist() == [3, 1]
    assert v.tokens[..., 0].tolist() == [[1, 2, 3, 4], [1, 0, mmspec.PAD, mmspec.PAD]]


def test_typical_is_lossy_and_labelled():
    assert not accept.RULES["typical"].lossless and "epsilon" in accept.RULES["typical"].bound  # states its bound
    assert all(accept.RULES[name].lossless for name in ("greedy", "speculative", "reproducible"))
    with pytest.raises(ValueError, match="must state its bound"):
        accept.RuleSpec("vague", lossless=False, build=lambda target=None: accept.typical)
    # a token with mass above the threshold is accepted although it is not the argmax
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))[None, None, None, :].expand(1, 2, 1, 3)
    draft = Draft(tokens=torch.tensor([[[1]]]))
    v = accept.typical(draft, logits, Sampler(Sampling(temperature=1.0)), torch.zeros(1, dtype=torch.long))
    assert v.n_accepted.tolist() == [1]
    strict = accept.RULES["typical"].build(None, epsilon=0.9, delta=0.9)
    assert strict(draft, logits, Sampler(Sampling(temperature=1.0)), torch.zeros(1, dtype=torch.long)).n_accepted.tolist() == [0]


def test_warp_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert torch.isinf(warp(logits, Sampling(temperature=1.0, top_k=2))).tolist() == [False, False, True, True]
    assert torch.isinf(warp(logits, Sampling(temperature=1.0, top_p=0.7))).tolist() == [False, False, True, True]
    assert torch.isinf(warp(logits, Sampling(temperature=1.0, top_p=0.5))).tolist() == [False, True, True, True]


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
])
def test_bad_sampling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


def test_bad_loop_arguments():
    target = ToyTarget()
    with pytest.raises(ValueError, match="k"):
        mmspec.generate(target, mmspec.JacobiDrafter(), prompt(), k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        mmspec.generate(target, None, prompt(), max_new_tokens=0)
    with pytest.raises(ValueError, match="greedy"):
        mmspec.generate(target, None, prompt(), sampling=Sampling(temperature=1.0), rule=accept.greedy)
    with pytest.raises(ValueError, match="unknown rule"):
        accept.spec_of("magic")
    with pytest.raises(ValueError, match="init"):
        mmspec.JacobiDrafter(init="zeros")
    with pytest.raises(ValueError, match="codebooks"):
        mmspec.generate(target, mmspec.ModelDrafter(ToyTarget(num_codebooks=2)), prompt(), max_new_tokens=3)


def test_adaptive_and_confident_model_drafts_stay_exact():
    target = ToyTarget(vocab_size=6, seed=3, sharpness=3.0)
    base = mmspec.autoregressive(target, prompt(2), max_new_tokens=40)
    for drafter in (mmspec.ModelDrafter(target.perturbed(0.5), adaptive=True),
                    mmspec.ModelDrafter(target.perturbed(0.5), confidence=0.6),
                    mmspec.ModelDrafter(target.perturbed(0.5), adaptive=True, confidence=0.3)):
        gen = mmspec.generate(target, drafter, prompt(2), max_new_tokens=40, k=6)
        assert torch.equal(gen.tokens, base.tokens)
        assert len({s.n_drafted for s in gen.steps[1:]}) > 1  # the draft length really varies
    with pytest.raises(ValueError, match="confidence"):
        mmspec.ModelDrafter(target, confidence=1.5)


@pytest.mark.slow
def test_adaptive_speculative_sampling_matches_the_target():
    target = ToyTarget(vocab_size=V, seed=5, sharpness=1.5)
    draft = target.perturbed(1.0, seed=9)
    p, n = prompt(L=4, seed=1), 3
    make = lambda: mmspec.ModelDrafter(draft, adaptive=True, confidence=0.5)  # noqa: E731
    counts = empirical(target, make, p, n, RUNS, accept.speculative, Sampling(temperature=1.0))
    assert chi2_pvalue(counts, exact(target, p, n), RUNS) > 1e-3
