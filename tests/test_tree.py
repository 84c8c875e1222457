"""Token trees on ToyTarget: the loop, the tree rules (greedy, reproducible, multi-candidate speculative
sampling, typical) and the tree topology helpers. The drafters here build trees from a perturbed toy
model's tables, so the tests need no branching drafter of the library."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import mmspec
from mmspec import Draft, Sampling, accept, tree
from mmspec.testing import ToyTarget, chi2_pvalue

V = 4
RUNS = 2500


def prompt(B=1, K=1, L=4, seed=1, vocab=V):
    return torch.randint(0, vocab, (B, L, K), generator=torch.Generator().manual_seed(seed))


class ToyTreeDrafter:
    """Expands ``width`` children per node, ``depth`` levels, from a toy draft model's next-frame logits:
    the top children (deterministic; the best last with ``reverse``), or ``width`` i.i.d. draws from q
    (``sample``; K = 1). ``lie`` reports a uniform q instead of the one sampled from."""

    wants_hidden = False

    def __init__(self, model: ToyTarget, width=2, depth=3, sample=False, reverse=False, lie=False):
        self.model, self.width, self.depth = model, width, depth
        self.sample, self.reverse, self.lie = sample, reverse, lie

    def start(self, target, sampler, prompt, max_new_tokens):
        self.sampler, self.seen = sampler, torch.stack(target.prompt_frames())  # [B, L, K]

    def _children(self, frame, before):  # [B, K], [B, K] -> tokens [B, W, K], q [B, W, K, V]
        logits = self.model._table(frame[:, None], before[:, None])[:, 0]  # [B, K, V]
        q = self.sampler.probs(logits)  # [B, K, V]
        if self.sample:
            kids = torch.stack([self.sampler.sample(q) for _ in range(self.width)], dim=1)  # [B, W, K]
        else:
            order = torch.argsort(logits, dim=-1, descending=True)[..., : self.width]  # [B, K, W]
            order = order.flip(-1) if self.reverse else order
            kids = order.permute(0, 2, 1)  # sibling w takes the w-th choice of every codebook
        return kids, q[:, None].expand(-1, self.width, -1, -1)

    def propose(self, last, k):
        tokens, probs, parents = [], [], []
        level = [(-1, last[:, 0], self.seen[:, -1])]  # (node, its frame, the frame before it)
        for _ in range(min(k, self.depth)):
            nxt = []
            for node, frame, before in level:
                kids, q = self._children(frame, before)
                for w in range(self.width):
                    parents.append(node)
                    tokens.append(kids[:, w])
                    probs.append(q[:, w])
                    nxt.append((len(tokens) - 1, kids[:, w], frame))
            level = nxt
        q = torch.stack(probs, dim=1)
        shown = torch.full_like(q, 1.0 / q.shape[-1]) if self.lie else q
        return Draft(tokens=torch.stack(tokens, dim=1), probs=shown if self.sample else None,
                     parents=torch.tensor(parents))

    def observe(self, step, target_logits):
        self.seen = torch.cat([self.seen, step.frames.clamp(min=0)], dim=1)


# -- topology ------------------------------------------------------------------------------------

def test_topology_helpers():
    p = torch.tensor([-1, -1, 0, 0, 1, 2])
    assert tree.depths(p).tolist() == [1, 1, 2, 2, 2, 3]
    assert tree.ancestors(p)[5].tolist() == [True, False, True, False, False, True]
    assert tree.path_to(p.expand(2, 6), torch.tensor([5, -1]), 3).tolist() == [[0, 2, 5], [-1, -1, -1]]
    assert tree.forward_parents(p, 6).tolist() == [-1, 0, 0, 1, 1, 2, 3]
    assert tree.is_chain(tree.chain(4)) and not tree.is_chain(p)
    for bad in (torch.tensor([0, -1]), torch.tensor([-1, 5]), torch.tensor([-2, 0]), torch.tensor([-1.0, 0.0])):
        with pytest.raises(ValueError, match="parents"):
            tree.check(bad, 2)


def test_the_toy_keeps_the_accepted_path_like_a_fresh_prefill():
    target, fresh = ToyTarget(vocab_size=5, seed=2), ToyTarget(vocab_size=5, seed=2)
    p = prompt(vocab=5)
    target.start(p, 8)
    frames = torch.tensor([[[1], [2], [3], [4], [0]]])  # [last, a, b, a.c, b.d]
    parents = tree.forward_parents(torch.tensor([-1, -1, 0, 1]), 4)
    tree_logits = target.forward(frames, parents)
    target.keep(target.pos - 5 + 3, torch.tensor([[0, 2, 4]]))  # keep last, b, b.d
    fresh.start(p, 8)
    want = fresh.forward(torch.tensor([[[1], [3], [0]]]))
    torch.testing.assert_close(tree_logits[:, [0, 2, 4]], want)  # each node saw exactly its ancestors
    torch.testing.assert_close(target.forward(torch.tensor([[[2]]])), fresh.forward(torch.tensor([[[2]]])))


# -- greedy and reproducible: identical output ---------------------------------------------------

@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, False), (3, 2, False), (2, 3, True)])
def test_greedy_tree_reproduces_greedy_decoding(K, B, shape):
    width, depth, reverse = shape  # reverse: the target's path is never the first child
    target = ToyTarget(vocab_size=6, num_codebooks=K, seed=3, eos_id=5 if B == 2 else None)
    p = prompt(B, K, vocab=6)
    base = mmspec.autoregressive(target, p, max_new_tokens=30)
    drafter = ToyTreeDrafter(target.perturbed(0.3), width=width, depth=depth, reverse=reverse)
    gen = mmspec.generate(target, drafter, p, max_new_tokens=30, k=depth)
    assert torch.equal(gen.tokens, base.tokens)
    assert gen.stats["steps"] < base.stats["steps"]  # the tree pays even when the best child comes last
    assert any(s.path is not None and s.path.shape[1] > 0 for s in gen.steps)


def test_a_tree_beats_its_own_first_branch():
    """The greedy path found among siblings commits more per step than the first-child chain."""
    target = ToyTarget(vocab_size=6, seed=0, sharpness=1.0)
    draft = target.perturbed(1.5, seed=2)
    chain = mmspec.generate(target, ToyTreeDrafter(draft, width=1, depth=4), prompt(vocab=6), max_new_tokens=40, k=4)
    wide = mmspec.generate(target, ToyTreeDrafter(draft, width=3, depth=4), prompt(vocab=6), max_new_tokens=40, k=4)
    assert torch.equal(chain.tokens, wide.tokens) and wide.stats["steps"] < 0.75 * chain.stats["steps"]  # 14 vs 28


@pytest.mark.slow
def test_reproducible_tree_is_identical_to_plain_keyed_sampling():
    target = ToyTarget(vocab_size=V, seed=5, sharpness=1.5)
    for seed in range(40):
        kw = dict(max_new_tokens=6, rule=accept.reproducible, sampling=Sampling(temperature=1.0), seed=seed)
        plain = mmspec.generate(target, None, prompt(), **kw)
        spec = mmspec.generate(target, ToyTreeDrafter(target.perturbed(0.5), width=2, depth=3), prompt(), k=3, **kw)
        assert torch.equal(plain.tokens, spec.tokens)


def test_typical_on_a_tree_at_temperature_zero_is_greedy():
    target = ToyTarget(vocab_size=6, seed=3)
    base = mmspec.autoregressive(target, prompt(vocab=6), max_new_tokens=20)
    gen = mmspec.generate(target, ToyTreeDrafter(target.perturbed(0.3)), prompt(vocab=6), max_new_tokens=20, k=3,
                          rule=accept.typical)
    assert torch.equal(gen.tokens, base.tokens)


# -- sampling: the target's distribution ---------------------------------------------------------

def empirical(target, make, p, n, rule=accept.speculative, runs=RUNS, k=3):
    counts = Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, make(), p, max_new_tokens=n, k=k, rule=rule, sampling=Sampling(temperature=1.0),
                              seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("K, sample", [(1, False), (1, True), (2, False)])
def test_tree_speculative_sampling_matches_the_target(K, sample):
    """Deterministic siblings (top-k) and i.i.d. sampled siblings (K = 1), and joint frames of 2 codebooks."""
    target = ToyTarget(vocab_size=3 if K == 2 else V, num_codebooks=K, seed=5, sharpness=1.5)
    draft = target.perturbed(1.0, seed=9)
    p, n = prompt(K=K, vocab=target.vocab_size), 3 if K == 1 else 2
    counts = empirical(target, lambda: ToyTreeDrafter(draft, width=2, depth=2, sample=sample), p, n)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) > 1e-3


@pytest.mark.slow
def test_a_tree_drafter_lying_about_q_is_caught():
    target = ToyTarget(vocab_size=V, seed=5, sharpness=0.7)
    draft = target.perturbed(3.0, seed=9)
    p, n = prompt(), 3
    counts = empirical(target, lambda: ToyTreeDrafter(draft, width=2, depth=2, sample=True, lie=True), p, n)
    assert chi2_pvalue(counts, target.distribution(p, n), RUNS) < 1e-6


def test_sampled_siblings_of_several_codebooks_are_refused():
    target = ToyTarget(vocab_size=3, num_codebooks=2, seed=5)
    drafter = ToyTreeDrafter(target.perturbed(1.0), sample=True)
    with pytest.raises(ValueError, match="several codebooks"):
        mmspec.generate(target, drafter, prompt(K=2, vocab=3), max_new_tokens=4, k=2, rule=accept.speculative,
                        sampling=Sampling(temperature=1.0))


def test_a_tree_larger_than_the_context_is_refused():
    target = ToyTarget(vocab_size=V, seed=1, max_frames=12)
    with pytest.raises(ValueError, match="does not fit the model's context"):
        mmspec.generate(target, ToyTreeDrafter(target.perturbed(0.5), width=3, depth=3), prompt(), max_new_tokens=6)


def test_stats_count_the_nodes_each_forward_verified():
    target = ToyTarget(vocab_size=6, seed=0, sharpness=1.0)
    gen = mmspec.generate(target, ToyTreeDrafter(target.perturbed(1.5, seed=2), width=2, depth=2), prompt(vocab=6),
                          max_new_tokens=20, k=2)
    drafted = [s.n_drafted for s in gen.steps[1:]]
    assert gen.stats["nodes_per_forward"] == pytest.approx(sum(n + 1 for n in drafted) / len(drafted))
    assert max(drafted) == 2 + 4  # width 2, depth 2: 6 nodes when the budget allows


def test_a_tree_is_cut_to_the_room_left_near_the_end_of_the_context():
    """A fixed-length context (an image grid): late trees keep their first nodes that fit; output unchanged."""
    target = ToyTarget(vocab_size=6, seed=3, max_frames=20)
    p = prompt(vocab=6)
    base = mmspec.autoregressive(target, p, max_new_tokens=40)
    gen = mmspec.generate(target, ToyTreeDrafter(target.perturbed(0.3), width=2, depth=3), p, max_new_tokens=40, k=3)
    assert torch.equal(gen.tokens, base.tokens) and gen.tokens.shape[1] == 20 - 4
    assert min(s.n_drafted for s in gen.steps[1:]) < 14  # some late steps verified fewer than the full 14 nodes


def _reference(parents: torch.Tensor, passed: torch.Tensor, node: torch.Tensor):
    """Depths, ancestor masks, the deepest passing node and its path by their definitions, node by node."""
    B, N = parents.shape
    depth = [[0] * N for _ in range(B)]
    anc = torch.zeros(B, N, N, dtype=torch.bool)
    best, paths = [], []
    for b in range(B):
        for j in range(N):
            k, chain_up = j, []
            while k >= 0:
                chain_up.append(k)
                k = int(parents[b, k])
            depth[b][j] = len(chain_up)
            anc[b, j, chain_up] = True
        good = [j for j in range(N) if all(bool(passed[b, k]) for k in torch.nonzero(anc[b, j]).flatten().tolist())]
        best.append(max(good, key=lambda j: (depth[b][j], -j)) if good else -1)
        up, k = [], int(node[b])
        while k >= 0:
            up.append(k)
            k = int(parents[b, k])
        paths.append(up[::-1])
    return torch.tensor(depth), anc, torch.tensor(best), paths


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=12), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_topology_walks_equal_their_definitions(shapes, seed):
    """``tree.depths``, ``tree.ancestors``, ``tree.path_to`` and ``accept_tree.deepest`` (list walks over the parents)
    equal the definitions (walk up from every node) on random trees of 1-12 nodes in 1-3 rows."""
    from mmspec.accept_tree import deepest

    g = torch.Generator().manual_seed(seed)
    N = len(shapes[0])
    parents = torch.tensor([[min(int(u * (j + 1)), j) - 1 for j, u in enumerate((row * N)[:N])] for row in shapes])
    passed = torch.rand(parents.shape, generator=g) < 0.7
    node = torch.randint(-1, N, (parents.shape[0],), generator=g)
    depth, anc, best, paths = _reference(parents, passed, node)
    tree.check(parents, N)
    assert torch.equal(tree.depths(parents), depth) and torch.equal(tree.depths(parents[0]), depth[0])
    assert torch.equal(tree.ancestors(parents), anc) and torch.equal(tree.ancestors(parents[0]), anc[0])
    assert torch.equal(deepest(parents, passed), best)
    for length in (N, 2):
        want = [(p[-length:] if len(p) > length else p) + [-1] * (length - min(len(p), length)) for p in paths]
        assert tree.path_to(parents, node, length).tolist() == want
