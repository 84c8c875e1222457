"""Compaction: once half of the rows still in a batch have ended, the loop drops them (``mmspec.compaction``), and
every row's output is unchanged: equal to the batch run without compaction and (greedy) to the row decoded alone,
or (``reproducible``) to the batch sampled autoregressively with the same keyed noise. Each test also checks, by
counting the frames of every target forward, that rows were really dropped; a drafter that does not declare
``selects_rows`` runs the whole batch to the end, exactly."""
from __future__ import annotations

import pytest
import torch

import mmspec
from mmspec import Sampling, accept
from mmspec.compaction import compacts
from mmspec.drafters import (CascadeDrafter, EagleDrafter, JacobiDrafter, MedusaDrafter, ModelDrafter,
                             PromptLookupDrafter)
from mmspec.heads import MedusaHeads, eagle_for
from mmspec.testing import CountedTarget
from test_perrow import PROMPTS, SPEECH_TEXTS, text_drafter, text_target

REPRODUCIBLE = dict(rule=accept.reproducible, sampling=Sampling(temperature=1.0), seed=5)


def both_ways(target, make, prompts, **kw):
    """The batch with and without compaction: their generations and the ``(B, T)`` of every verify forward."""
    counted = CountedTarget(target)
    gens, shapes = [], []
    for compact in (True, False):
        gens.append(mmspec.generate(counted, make(), prompts, compact=compact, **kw))
        shapes.append(counted.shapes)
    return gens, shapes


def check(target, make, prompts, want, **kw) -> None:
    """Compacted == uncompacted == ``want`` (token ids per row); rows were dropped only with compaction."""
    (small, full), (dropped, kept) = both_ways(target, make, prompts, **kw)
    assert small.token_ids() == full.token_ids() == want
    assert torch.equal(small.tokens, full.tokens) and torch.equal(small.lengths, full.lengths)
    assert all(B == len(prompts) for B, _ in kept), "compact=False runs the whole batch"
    assert min(B for B, _ in dropped) < len(prompts), f"no row was dropped: {dropped}"
    assert sum(B * T for B, T in dropped) < sum(B * T for B, T in kept)
    counts = torch.stack([s.counts for s in small.steps])  # [steps, B]: steps of the whole batch, 0 once dropped
    assert bool((counts.sum(0) >= small.lengths).all())  # a step counts the frames after its EOS too
    assert bool((counts[-1] == 0).sum() >= len(prompts) // 2)


def with_eos(target, n: int, **kw):
    """Make the target end rows at tokens that rows 1 and 3 say early, so that half of the batch ends while the
    other rows go on (every exact drafter's output is the autoregressive one, greedy or ``kw``'s rule)."""
    rows = mmspec.autoregressive(target, PROMPTS, max_new_tokens=n, **kw).token_ids()
    target.eos_ids = torch.tensor([rows[1][3], rows[3][6]])
    lengths = [len(r) for r in mmspec.autoregressive(target, PROMPTS, max_new_tokens=n, **kw).token_ids()]
    assert sum(length < max(lengths) for length in lengths) >= 2, lengths
    return target


TEXT = ["prompt-lookup", "prompt-lookup-tree", "jacobi", "lookahead", "medusa", "medusa-tree", "eagle", "eagle-tree",
        "mixed", "model", "model-tree", "cascade"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name", TEXT)
def test_text_rows_greedy(tiny_models, name, fast):
    target = with_eos(text_target(tiny_models, fast), 20)
    make = (lambda: CascadeDrafter([PromptLookupDrafter(), text_drafter("eagle")])) if name == "cascade" else \
        (lambda: text_drafter(name, tiny_models))
    assert compacts(target, make())
    alone = [mmspec.generate(target, make(), [p], max_new_tokens=20, k=4).token_ids()[0] for p in PROMPTS]
    check(target, make, PROMPTS, alone, max_new_tokens=20, k=4)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name", ["prompt-lookup", "eagle", "model"])
def test_text_rows_reproducible(tiny_models, name, fast):
    """Keyed noise per (starting row, position): a kept row samples what it would have in the whole batch."""
    target = with_eos(text_target(tiny_models, fast), 20, **REPRODUCIBLE)
    base = mmspec.autoregressive(target, PROMPTS, max_new_tokens=20, compact=False, **REPRODUCIBLE).token_ids()
    check(target, lambda: text_drafter(name, tiny_models), PROMPTS, base, max_new_tokens=20, k=4, **REPRODUCIBLE)


def test_autoregressive_batches_compact_too(tiny_models):
    target = with_eos(text_target(tiny_models, True), 20)
    alone = [mmspec.autoregressive(target, [p], max_new_tokens=20).token_ids()[0] for p in PROMPTS]
    check(target, lambda: None, PROMPTS, alone, max_new_tokens=20)


CLASSES4 = ["red ring", "blue cross", "green disk", "blue cross"]


IMAGE = [("sjd", "greedy"), ("sjd", "reproducible"), ("medusa-tree", "greedy"), ("medusa", "reproducible"),
         ("eagle", "reproducible")]  # (greedy, the random EAGLE layer accepts too little for rows to end apart)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name,rule", IMAGE)
def test_image_rows_with_guidance(image_models, name, fast, rule):
    """Both guidance halves of a kept row stay aligned; the guidance interval follows each row's grid index."""
    from builders import tiny_meta
    from mmspec.image import ImageTarget, SpatialInit

    model, vq = image_models["target"]
    target = ImageTarget(model, vq, tiny_meta(), guidance_interval=(0.0, 0.5), fast=fast)
    H = model.config.hidden_size

    def make():
        torch.manual_seed(1)
        if name.startswith("medusa"):
            tree = dict(tree=7, width=3) if name == "medusa-tree" else {}
            return MedusaDrafter(MedusaHeads(H, 3, zero_init=False), **tree)
        if name == "eagle":
            return EagleDrafter(eagle_for(H, H, 4, window=32))
        return JacobiDrafter(init=SpatialInit("above"))

    kw = dict(max_new_tokens=16, k=4) if rule == "greedy" else dict(max_new_tokens=16, k=4, **REPRODUCIBLE)
    if rule == "greedy":
        want = [mmspec.generate(target, make(), [c], **kw).token_ids()[0] for c in CLASSES4]
    else:
        want = mmspec.autoregressive(target, CLASSES4, compact=False, **{a: b for a, b in kw.items() if a != "k"})
        want = want.token_ids()
    check(target, make, CLASSES4, want, **kw)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name", ["eagle", "medusa", "codec-lookup", "model"])
def test_speech_rows_keep_their_delay_pattern(speech_folders, name, fast):
    """A kept row's fed steps (the delay pattern's constraint reads them) stay its own."""
    from mmspec.speech import SpeechTarget

    target = SpeechTarget.from_pretrained(speech_folders["target"], fast=fast)

    def make():
        torch.manual_seed(1)
        if name == "codec-lookup":
            from mmspec.speech import CodecLookupDrafter

            return CodecLookupDrafter()
        if name == "model":
            return ModelDrafter(SpeechTarget.from_pretrained(speech_folders["draft"], load_codec=False, fast=fast))
        return EagleDrafter(eagle_for(32, 32, 4, window=32)) if name == "eagle" else \
            MedusaDrafter(MedusaHeads(32, 3, zero_init=False))

    alone = [mmspec.generate(target, make(), [t], max_new_tokens=30, k=4).token_ids()[0] for t in SPEECH_TEXTS]
    check(target, make, SPEECH_TEXTS, alone, max_new_tokens=30, k=4)
    base = mmspec.autoregressive(target, SPEECH_TEXTS, max_new_tokens=30, compact=False, **REPRODUCIBLE).token_ids()
    check(target, make, SPEECH_TEXTS, base, max_new_tokens=30, k=4, **REPRODUCIBLE)


class Keeps(PromptLookupDrafter):
    selects_rows = False  # as a drafter that does not declare it


def test_a_drafter_without_the_capability_runs_the_whole_batch(tiny_models):
    target = with_eos(text_target(tiny_models, True), 20)
    assert not compacts(target, Keeps()) and compacts(target, PromptLookupDrafter())
    counted = CountedTarget(target)
    gen = mmspec.generate(counted, Keeps(), PROMPTS, max_new_tokens=20, k=4)
    assert all(B == len(PROMPTS) for B, _ in counted.shapes)
    assert gen.token_ids() == [mmspec.generate(target, Keeps(), [p], max_new_tokens=20, k=4).token_ids()[0]
                               for p in PROMPTS]


def test_compact_must_be_a_bool(tiny_models):
    target = text_target(tiny_models, True)
    with pytest.raises(ValueError, match="compact must be True or False"):
        mmspec.generate(target, None, PROMPTS, max_new_tokens=4, compact="yes")


def test_an_adapter_that_does_not_declare_it_refuses_to_drop_rows(janus_models):
    from mmspec.image.janus import JanusTarget

    target = JanusTarget(janus_models[0], guidance_scale=3.0)
    assert not target.selects_rows
    target.start([[2, 10, 11, 12, 5], [2, 20, 5]], 4)
    with pytest.raises(ValueError, match="does not declare selects_rows"):
        target.select_rows(torch.tensor([1]))


def test_sampler_keeps_each_rows_noise():
    """After ``select_rows`` a kept row draws the keyed noise of its place in the starting batch."""
    from mmspec.sampling import Sampler

    sampler = Sampler(Sampling(temperature=1.0), seed=3, keyed=True)
    positions = torch.tensor([[5, 6], [5, 6], [9, 10], [5, 6]])  # [4, 2]
    before = sampler.gumbel(positions, 1, 7)  # [4, 2, 1, 7]
    sampler.select_rows(torch.tensor([2, 3]))
    sampler.select_rows(torch.tensor([1]))  # the starting row 3
    assert torch.equal(sampler.gumbel(positions[3:], 1, 7), before[3:])
    assert not torch.equal(sampler.gumbel(positions[1:2], 1, 7), before[1:2])  # the negative control


def test_a_doubled_cache_keeps_both_halves_of_a_row():
    from mmspec.hf import KVCache

    mask = torch.arange(6)[:, None].expand(6, 4).clone()  # [2B, S]: row r holds r
    fed = torch.arange(3)[:, None, None].expand(3, 2, 1).clone()  # [B, F, K]: not doubled
    cache = KVCache(mask=mask, fed=fed, kv=None)
    cache.select_rows(torch.tensor([2, 0]), 3)
    assert cache.mask[:, 0].tolist() == [2, 0, 5, 3] and cache.fed[:, 0, 0].tolist() == [2, 0]
    with pytest.raises(ValueError, match="guidance halves"):
        cache.select_rows(torch.tensor([0]), 3)


def test_the_conformance_check_catches_a_target_that_keeps_the_wrong_rows(tiny_models):
    """``mmspec.testing.check_select_rows`` (run by the conformance suite for every target that declares
    ``selects_rows``) fails for a target that keeps another row's cache under the kept row's ``pos``."""
    from mmspec.testing import check_select_rows
    from mmspec.text import TextTarget

    class OtherRowsCache(TextTarget):
        def select_rows(self, index):
            pos = self.pos[index]
            super().select_rows(1 - index)
            self.pos = pos

    prompts = ["def add(a, b):", "class Stack:\n    def"]
    check_select_rows(lambda: TextTarget.from_pretrained(tiny_models["llama"]), prompts, list, 5, 12, 1e-4)
    with pytest.raises(AssertionError, match="select_rows"):
        check_select_rows(lambda: OtherRowsCache.from_pretrained(tiny_models["llama"]), prompts, list, 5, 12, 1e-4)
