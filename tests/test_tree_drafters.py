"""Drafters that branch, on ToyTarget: the draft model's static and dynamic (EAGLE-2) trees, prompt
lookup, lookahead and codec lookup tries, the mixed drafter, and their names in ``mmspec.methods``."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

import mmspec
from mmspec import MixedDrafter, ModelDrafter, PromptLookupDrafter, Sampling, accept, methods
from mmspec.drafters import LookaheadDrafter
from mmspec.modalities import Modality
from mmspec.speech.drafters import CodecLookupDrafter
from mmspec.testing import ToyTarget, chi2_pvalue

RUNS = 2500


def prompt(B=1, K=1, L=12, seed=1, vocab=6):
    return torch.randint(0, vocab, (B, L, K), generator=torch.Generator().manual_seed(seed))


def decoy_prompt(target, K=1, n=40, every=4, seed=1):
    """The target's own greedy continuation G of a short prompt P, then a newer copy of G with every
    ``every``-th frame changed, then P: the newest match of a retrieval drafter is often the wrong copy."""
    p0 = prompt(1, K, L=4, seed=seed, vocab=target.vocab_size)
    g = mmspec.autoregressive(target, p0, max_new_tokens=n).tokens  # [1, n, K]
    decoy = g.clone()
    decoy[:, every - 1 :: every] = (decoy[:, every - 1 :: every] + 1) % target.vocab_size
    return torch.cat([g, decoy, p0], dim=1)


DRAFTERS = {  # name -> (target, node budget, width) -> drafter
    "model": lambda t, n, w: ModelDrafter(t.perturbed(0.5), tree=n, width=w),
    "model-dynamic": lambda t, n, w: ModelDrafter(t.perturbed(0.5), tree=n, width=w, dynamic=True),
    "prompt-lookup": lambda t, n, w: PromptLookupDrafter(tree=n),
    "lookahead": lambda t, n, w: LookaheadDrafter(tree=n),
    "codec-lookup": lambda t, n, w: CodecLookupDrafter(tree=n, width=w),
    "mixed": lambda t, n, w: MixedDrafter([PromptLookupDrafter(tree=n), ModelDrafter(t.perturbed(0.5), tree=n, width=w)],
                                          nodes=n),
    "mixed-chains": lambda t, n, w: MixedDrafter([mmspec.JacobiDrafter("repeat"), PromptLookupDrafter(),
                                                  ModelDrafter(t.perturbed(0.5))], nodes=n),
}


# -- greedy: identical output ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(DRAFTERS))
@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("B", [1, 2])
def test_greedy_tree_drafters_reproduce_greedy_decoding(name, K, B):
    target = ToyTarget(vocab_size=6, num_codebooks=K, seed=3, eos_id=5 if B == 2 else None)
    p = prompt(B, K)
    base = mmspec.autoregressive(target, p, max_new_tokens=30)
    for nodes, width, k in [(1, 2, 3), (5, 2, 4), (9, 3, 3), (16, 2, 6)]:
        gen = mmspec.generate(target, DRAFTERS[name](target, nodes, width), p, max_new_tokens=30, k=k)
        assert torch.equal(gen.tokens, base.tokens), (nodes, width, k)
        assert gen.stats["steps"] <= base.stats["steps"]


def test_a_prompt_lookup_trie_branches_on_the_longest_matching_ngram_only():
    """Suffix (3, 4): its 2-gram matches twice (followed by 5 and by 0), its 1-gram 4 once more (followed by 1);
    the trie holds the 2-gram matches' continuations, newest first, and not the 1-gram's."""
    from mmspec.drafters.ngram import continuations

    seq = torch.tensor([3, 4, 5, 4, 1, 2, 3, 4, 0, 3, 4])
    got = [seq[c].tolist() for c in continuations(seq, 3, 1, 2)]
    assert got == [[0, 3], [5, 4]]
    short = torch.tensor([1, 2, 9, 2])
    assert [short[c].tolist() for c in continuations(short, 3, 1, 2)] == [[9, 2]]  # only its 1-gram matches


def test_a_tree_whose_accepted_nodes_lead_it_is_kept_without_a_gather():
    from mmspec.loop import _in_order

    assert _in_order(torch.tensor([[0, 1, -1], [0, -1, -1]])) and _in_order(torch.zeros(2, 0, dtype=torch.long))
    assert not _in_order(torch.tensor([[0, 2, -1], [0, 1, 2]])) and not _in_order(torch.tensor([[1, -1]]))


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_model_tree_beats_the_model_chain(dynamic):
    """A draft model that often ranks the target's choice second: its tree commits far more per forward."""
    target = ToyTarget(vocab_size=6, seed=0, sharpness=1.0)
    draft = target.perturbed(1.5, seed=2)
    p = prompt(L=4)
    chain = mmspec.generate(target, ModelDrafter(draft), p, max_new_tokens=40, k=4)
    tree = mmspec.generate(target, ModelDrafter(draft, tree=12, width=3, dynamic=dynamic), p, max_new_tokens=40, k=4)
    assert torch.equal(chain.tokens, tree.tokens) and tree.stats["steps"] < 0.75 * chain.stats["steps"]  # 14 vs 27
    assert any(s.path is not None for s in tree.steps)


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("name", ["prompt-lookup", "lookahead", "codec-lookup", "mixed"])
def test_a_retrieval_tree_beats_its_chain_when_the_newest_match_lies(name, K):
    target = ToyTarget(vocab_size=6, num_codebooks=K, seed=3)
    p = decoy_prompt(target, K)
    chain = {"prompt-lookup": PromptLookupDrafter, "lookahead": LookaheadDrafter, "codec-lookup": CodecLookupDrafter,
             "mixed": PromptLookupDrafter}[name]()
    base = mmspec.generate(target, chain, p, max_new_tokens=36, k=4)
    gen = mmspec.generate(target, DRAFTERS[name](target, 8, 2), p, max_new_tokens=36, k=4)
    assert torch.equal(gen.tokens, base.tokens) and gen.stats["steps"] < base.stats["steps"]


@pytest.mark.parametrize("shape", [dict(), dict(tree=7), dict(tree=8, dynamic=True)])
@pytest.mark.parametrize("mixed", [False, True])
def test_the_draft_model_cache_holds_exactly_the_committed_prefix(shape, mixed):
    """After every step the draft model holds committed frames only, and the backlog is what it lacks,
    also when the committed path came from another drafter's branch (a mixture)."""
    target = ToyTarget(vocab_size=6, seed=3)
    model = target.perturbed(0.5)
    drafter = ModelDrafter(model, **shape)
    if mixed:
        drafter = MixedDrafter([PromptLookupDrafter(tree=6), drafter], nodes=10)
    part = drafter.parts[1] if mixed else drafter
    backlog = []
    for step in mmspec.stream(target, drafter, decoy_prompt(target), max_new_tokens=30, k=4):
        n = int(model.pos[0])
        assert torch.equal(model.history[:, :n], target.history[:, :n])
        backlog.append(0 if part.waiting is None else int(part.waiting[0]))  # frames row 0 has waiting
        assert n + backlog[-1] == int(target.pos[0]) + 1  # the target's cache lacks ``last`` only
    assert mixed or max(backlog[:-1]) <= 2  # the deepest node is never fed: at most it and the bonus frame wait (the run's
    # last step drafts nothing, so its frame joins the backlog); in a mixture the other branches wait too


# -- sampling rules -------------------------------------------------------------------------------

def test_sampled_siblings_carry_their_q_and_dynamic_trees_are_deterministic():
    target = ToyTarget(vocab_size=4, seed=5, sharpness=1.5)
    seen = {}
    for dynamic in (False, True):
        drafter = ModelDrafter(target.perturbed(1.0, seed=9), tree=6, width=2, dynamic=dynamic)
        original = drafter.propose

        def spy(last, k, original=original, dynamic=dynamic):
            draft = original(last, k)
            seen[dynamic] = draft
            return draft

        drafter.propose = spy
        mmspec.generate(target, drafter, prompt(vocab=4), max_new_tokens=6, k=3, rule=accept.speculative,
                        sampling=Sampling(temperature=1.0), seed=1)
    assert seen[False].probs is not None and seen[False].probs.shape[:3] == seen[False].tokens.shape
    assert seen[True].probs is None


def test_reproducible_model_tree_is_identical_to_plain_keyed_sampling():
    target = ToyTarget(vocab_size=4, seed=5, sharpness=1.5)
    for seed in range(8):
        kw = dict(max_new_tokens=8, rule=accept.reproducible, sampling=Sampling(temperature=1.0), seed=seed)
        plain = mmspec.generate(target, None, prompt(vocab=4), **kw)
        for dynamic in (False, True):
            drafter = ModelDrafter(target.perturbed(0.5), tree=6, dynamic=dynamic)
            assert torch.equal(mmspec.generate(target, drafter, prompt(vocab=4), k=3, **kw).tokens, plain.tokens)


class Lying:
    """Wraps a drafter and reports a uniform q for its sampled nodes (a negative control)."""

    def __init__(self, drafter):
        self.drafter = drafter
        self.start, self.observe, self.wants_hidden = drafter.start, drafter.observe, drafter.wants_hidden

    def propose(self, last, k):
        draft = self.drafter.propose(last, k)
        if draft.probs is not None:
            draft.probs = torch.full_like(draft.probs, 1.0 / draft.probs.shape[-1])
        return draft


def empirical(target, make, p, n, runs=RUNS, k=2):
    counts = Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, make(), p, max_new_tokens=n, k=k, rule=accept.speculative,
                              sampling=Sampling(temperature=1.0), seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model-sampled", "model-dynamic", "prompt-lookup", "mixed-sampled"])
def test_tree_drafters_sample_the_target_distribution(name):
    """Sampled i.i.d. siblings with their q, deterministic dynamic trees, a deterministic trie, and a
    mixture holding a sampled draft model (merged as deterministic)."""
    target = ToyTarget(vocab_size=4, seed=5, sharpness=1.5)
    draft = target.perturbed(1.0, seed=9)
    make = {
        "model-sampled": lambda: ModelDrafter(draft, tree=4, width=2),
        "model-dynamic": lambda: ModelDrafter(draft, tree=4, width=2, dynamic=True),
        "prompt-lookup": lambda: PromptLookupDrafter(tree=4),
        "mixed-sampled": lambda: MixedDrafter([PromptLookupDrafter(tree=4), ModelDrafter(draft, tree=4)], nodes=6),
    }[name]
    p, n = prompt(L=5, vocab=4), 3
    assert chi2_pvalue(empirical(target, make, p, n), target.distribution(p, n), RUNS) > 1e-3


@pytest.mark.slow
def test_a_model_tree_lying_about_q_is_caught():
    target = ToyTarget(vocab_size=4, seed=5, sharpness=0.7)
    draft = target.perturbed(3.0, seed=9)
    p, n = prompt(L=5, vocab=4), 3
    counts = empirical(target, lambda: Lying(ModelDrafter(draft, tree=4, width=2)), p, n)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) < 1e-6


# -- bad input and names ---------------------------------------------------------------------------

TOY = Modality(name="toy", title="toy", unit="frames", default_target="toy", default_draft="toy", examples=("x",),
               load=lambda name, **options: ToyTarget(), prompts=lambda p, batch: [p] * batch)


def test_bad_tree_shapes_are_value_errors_naming_the_parameter():
    model = ToyTarget().perturbed(0.5)
    for bad in (0, -1, 1.5, True):
        for make in (lambda: ModelDrafter(model, tree=bad), lambda: PromptLookupDrafter(tree=bad),
                     lambda: LookaheadDrafter(tree=bad), lambda: CodecLookupDrafter(tree=bad)):
            with pytest.raises(ValueError, match="tree"):
                make()
        with pytest.raises(ValueError, match="width"):
            ModelDrafter(model, tree=4, width=bad)
        with pytest.raises(ValueError, match="nodes"):
            MixedDrafter([PromptLookupDrafter()], nodes=bad)
    with pytest.raises(ValueError, match="dynamic"):
        ModelDrafter(model, dynamic=True)
    with pytest.raises(ValueError, match="adaptive"):
        ModelDrafter(model, tree=4, adaptive=True)
    with pytest.raises(ValueError, match="drafters"):
        MixedDrafter([])
    one = PromptLookupDrafter()
    with pytest.raises(ValueError, match="drafters"):
        MixedDrafter([one, one])


def test_methods_build_trees_and_mixtures_by_name():
    draft = ToyTarget().perturbed(0.5)
    made = methods.make_drafter("model", TOY, draft=draft, tree=8, width=3, dynamic=True)
    assert isinstance(made, ModelDrafter) and (made.tree, made.width, made.dynamic) == (8, 3, True)
    assert methods.make_drafter("prompt-lookup", TOY, tree=5).tree == 5
    assert methods.make_drafter("lookahead", TOY, tree=5).tree == 5
    mixed = methods.make_drafter("prompt-lookup+model", TOY, draft=draft, tree=6)
    assert isinstance(mixed, MixedDrafter) and mixed.nodes == 6
    assert [type(p) for p in mixed.parts] == [PromptLookupDrafter, ModelDrafter] and mixed.parts[1].tree == 6
    chains = methods.make_drafter("jacobi+prompt-lookup", TOY)
    assert chains.nodes is None and chains.parts[1].tree is None
    assert methods.make_drafter("model", TOY, draft=draft).tree is None  # chains by default


@pytest.mark.parametrize("kwargs, word", [
    (dict(name="jacobi", tree=4), "tree"),
    (dict(name="model", tree=0), "tree"),
    (dict(name="model", tree=4, width=0), "width"),
    (dict(name="prompt-lookup+nope", tree=4), "drafter"),
    (dict(name="prompt-lookup+none"), "drafter"),
    (dict(name="model+model", tree=4), "drafter"),
    (dict(name="prompt-lookup", tree=4, dynamic=True), "dynamic"),
])
def test_methods_refuse_bad_trees_naming_the_parameter(kwargs, word):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=word):
        methods.make_drafter(name, TOY, draft=ToyTarget().perturbed(0.5), **kwargs)


def test_the_speech_modality_builds_a_codec_lookup_tree():
    from mmspec.speech.api import MODALITY as SPEECH

    made = methods.make_drafter("codec-lookup", SPEECH, tree=6, width=3)
    assert isinstance(made, CodecLookupDrafter) and (made.tree, made.width) == (6, 3)
    assert methods.make_drafter("codec-lookup", SPEECH).tree is None
