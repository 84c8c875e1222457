"""Per-row commits: in a batch every row commits its own accepted frames + 1 per step (``Step.counts``), and each
row's output equals that row decoded alone (greedy) or the batch decoded autoregressively with the same keyed
noise (``reproducible``), for every drafter, chains and trees, on both forward paths, with prompts of different
lengths. Rows really move apart (a step where live rows commit different counts), and what cannot follow rows
apart (a draft model, a grid-reading Jacobi init, the speech adapters) stays in lockstep and exact."""
from __future__ import annotations

import pytest
import torch

import mmspec
from mmspec import Sampling, accept
from mmspec.drafters import (CascadeDrafter, EagleDrafter, JacobiDrafter, LookaheadDrafter, MedusaDrafter,
                             MixedDrafter, ModelDrafter, PromptLookupDrafter)
from mmspec.heads import MedusaHeads, eagle_for
from mmspec.loop import assemble, rows_apart

PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):", "class Stack:\n    def",
           "import os\nimport sys\n\ndef main():\n    pass\n\ndef", "x = [1, 2, 3]\nx = [1,"]


def text_target(tiny_models, fast, arch="llama"):
    from mmspec.text import TextTarget

    return TextTarget.from_pretrained(tiny_models[arch], device="cpu", fast=fast)


def text_drafter(name: str, tiny_models=None):
    torch.manual_seed(1)
    if name.startswith("model"):
        from mmspec.text import TextTarget

        draft = TextTarget.from_pretrained(tiny_models["llama-draft"])
        return ModelDrafter(draft) if name == "model" else ModelDrafter(draft, tree=6, width=2, dynamic=True)
    return {
        "none": lambda: None,
        "prompt-lookup": lambda: PromptLookupDrafter(),
        "prompt-lookup-tree": lambda: PromptLookupDrafter(tree=6),
        "jacobi": lambda: JacobiDrafter(init="repeat"),
        "lookahead": lambda: LookaheadDrafter(),
        "medusa": lambda: MedusaDrafter(MedusaHeads(32, 3, zero_init=False)),
        "medusa-tree": lambda: MedusaDrafter(MedusaHeads(32, 3, zero_init=False), tree=7, width=3),
        "eagle": lambda: EagleDrafter(eagle_for(32, 32, 4, window=16)),
        "eagle-tree": lambda: EagleDrafter(eagle_for(32, 32, 4, window=16), tree=9, width=3),
        "mixed": lambda: MixedDrafter([PromptLookupDrafter(), JacobiDrafter(init="repeat")], nodes=8),
        "cascade": lambda: CascadeDrafter([PromptLookupDrafter(), JacobiDrafter(init="repeat")]),
    }[name]()


def apart(gen) -> bool:
    """Whether some step committed different counts in rows that were still running."""
    for s in gen.steps:
        live = s.counts[s.counts > 0]
        if len(live) > 1 and bool((live != live[0]).any()):
            return True
    return False


DRAFTERS = ["none", "prompt-lookup", "prompt-lookup-tree", "jacobi", "lookahead", "medusa", "medusa-tree", "eagle",
            "eagle-tree", "mixed", "cascade", "model", "model-tree"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name", DRAFTERS)
def test_each_row_equals_the_row_alone(tiny_models, name, fast):
    target = text_target(tiny_models, fast)
    alone = [mmspec.generate(target, text_drafter(name, tiny_models), [p], max_new_tokens=20, k=4).token_ids()[0] for p in PROMPTS]
    for B in (2, 4):
        gen = mmspec.generate(target, text_drafter(name, tiny_models), PROMPTS[:B], max_new_tokens=20, k=4)
        assert gen.token_ids() == alone[:B], (name, B)
        assert rows_apart(target, text_drafter(name, tiny_models))
        if B == 4 and sum(int(s.n_accepted.sum()) for s in gen.steps) > 2:
            assert apart(gen), name  # drafts were accepted: the rows did move at their own pace
        assert gen.stats["steps"] <= max(
            len(mmspec.generate(target, text_drafter(name, tiny_models), [p], max_new_tokens=20, k=4).steps) for p in PROMPTS[:B]
        ) + 2  # no row waits for another (drafts may differ a little from a row's own: a window, a break rule)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_other_architectures(tiny_models, arch):
    target = text_target(tiny_models, None, arch)
    for name in ("prompt-lookup", "prompt-lookup-tree", "eagle-tree"):
        alone = [mmspec.generate(target, text_drafter(name, tiny_models), [p], max_new_tokens=16, k=4).token_ids()[0]
                 for p in PROMPTS]
        assert mmspec.generate(target, text_drafter(name, tiny_models), PROMPTS, max_new_tokens=16, k=4).token_ids() == alone


@pytest.mark.parametrize("name", ["prompt-lookup", "prompt-lookup-tree", "eagle", "medusa-tree", "model", "model-tree"])
def test_reproducible_sampling_is_the_batch_decoded_autoregressively(tiny_models, name):
    """Keyed noise per (row, position): speculative decoding of the batch is the same batch sampled frame by frame."""
    target = text_target(tiny_models, None)
    kw = dict(max_new_tokens=20, rule=accept.reproducible, sampling=Sampling(temperature=1.0), seed=5)
    base = mmspec.autoregressive(target, PROMPTS, **kw)
    gen = mmspec.generate(target, text_drafter(name, tiny_models), PROMPTS, k=4, **kw)
    assert gen.token_ids() == base.token_ids()


class Lockstep(PromptLookupDrafter):
    per_row_commits = False  # as a drafter that does not declare it


def test_a_drafter_without_per_row_commits_keeps_rows_in_lockstep(tiny_models):
    """A drafter that does not declare ``per_row_commits`` runs the batch minimum, exactly."""
    target = text_target(tiny_models, None)
    assert not rows_apart(target, Lockstep())
    gen = mmspec.generate(target, Lockstep(), PROMPTS, max_new_tokens=16, k=4)
    assert not apart(gen) and apart(mmspec.generate(target, PromptLookupDrafter(), PROMPTS, max_new_tokens=16, k=4))
    assert gen.token_ids() == mmspec.autoregressive(target, PROMPTS, max_new_tokens=16).token_ids()


def test_ended_rows_commit_nothing_and_the_others_go_on(tiny_models):
    """A row that ends (budget or EOS) commits 0 frames from then on; per-row mean accepted ignores its idle steps."""
    target = text_target(tiny_models, True)
    gen = mmspec.generate(target, PromptLookupDrafter(), PROMPTS, max_new_tokens=20, k=4)
    counts = torch.stack([s.counts for s in gen.steps])  # [steps, B]
    assert torch.equal(counts.sum(0), gen.lengths) or bool((counts.sum(0) >= gen.lengths).all())
    assert bool((counts[-1] == 0).any()) or apart(gen)
    tokens, lengths = assemble(gen.steps)
    assert torch.equal(tokens, gen.tokens) and torch.equal(lengths, gen.lengths)
    per_row = (counts.sum(0).float() / (counts > 0).sum(0)).mean()
    assert abs(gen.stats["mean_accepted"] - float(per_row)) < 1e-6


def test_holes_are_masked_not_copied():
    """KVCache.rollback with rows moving back by different counts removes the common part and masks the rest."""
    from mmspec.hf import KVCache

    class Kv:
        length = 10

        def get_seq_length(self):
            return self.length

        def crop(self, n):
            self.length += n

    cache = KVCache(kv=Kv())
    removed = cache.rollback(torch.tensor([10, 10]), torch.tensor([8, 5]))
    assert removed == 2 and cache.length == 8
    assert cache.mask.tolist() == [[1] * 8, [1] * 5 + [0] * 3]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name", ["prompt-lookup", "jacobi", "jacobi-above", "medusa-tree", "eagle", "model"])
def test_image_rows_with_guidance(image_models, name, fast):
    """Both guidance halves move with their row; the guidance interval follows each row's own grid index."""
    from builders import CLASSES, tiny_meta
    from mmspec.image import ImageTarget, SpatialInit

    model, vq = image_models["target"]
    target = ImageTarget(model, vq, tiny_meta(), guidance_interval=(0.0, 0.5), fast=fast)
    classes = list(CLASSES[:3])

    def drafter():
        torch.manual_seed(1)
        if name == "medusa-tree":
            return MedusaDrafter(MedusaHeads(model.config.hidden_size, 3, zero_init=False), tree=7, width=3)
        if name == "eagle":
            return EagleDrafter(eagle_for(model.config.hidden_size, model.config.hidden_size, 4, window=32))
        if name == "model":
            return ModelDrafter(ImageTarget(*image_models["draft"], tiny_meta(), fast=fast))
        if name == "jacobi-above":  # a spatial init reads each row's own grid
            return JacobiDrafter(init=SpatialInit("above"))
        return text_drafter(name)

    alone = [mmspec.generate(target, drafter(), [c], max_new_tokens=24, k=4).token_ids()[0] for c in classes]
    gen = mmspec.generate(target, drafter(), classes, max_new_tokens=24, k=4)
    assert gen.token_ids() == alone


SPEECH_TEXTS = ["Hello world", "Hi there, how are you", "A much longer sentence to say, with a pause", "Ok"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("name", ["prompt-lookup", "prompt-lookup-tree", "jacobi", "model", "model-tree", "eagle",
                                  "codec-lookup", "codec-lookup-tree", "jacobi-codec-lookup"])
def test_speech_rows_keep_their_own_delay_pattern(speech_folders, name, fast):
    """Each row's delay-pattern constraint reads its own fed steps (holes skipped): every row as alone."""
    from mmspec.speech import SpeechTarget

    target = SpeechTarget.from_pretrained(speech_folders["target"], fast=fast)

    def drafter():
        torch.manual_seed(1)
        if name.startswith("model"):
            draft = SpeechTarget.from_pretrained(speech_folders["draft"], load_codec=False, fast=fast)
            return ModelDrafter(draft) if name == "model" else ModelDrafter(draft, tree=6, width=2)
        if name == "eagle":
            return EagleDrafter(eagle_for(32, 32, 4, window=32))
        if name == "jacobi-codec-lookup":  # a callable init reads each row's own output
            from mmspec.speech import api

            return JacobiDrafter(api.MODALITY.inits["codec-lookup"])
        if name.startswith("codec-lookup"):
            from mmspec.speech import CodecLookupDrafter

            return CodecLookupDrafter() if name == "codec-lookup" else CodecLookupDrafter(tree=6)
        return text_drafter(name)

    assert rows_apart(target, drafter())
    alone = [mmspec.generate(target, drafter(), [t], max_new_tokens=30, k=4).token_ids()[0] for t in SPEECH_TEXTS]
    gen = mmspec.generate(target, drafter(), SPEECH_TEXTS, max_new_tokens=30, k=4)
    assert gen.token_ids() == alone
    one = mmspec.generate(target, drafter(), [SPEECH_TEXTS[1]], max_new_tokens=30, k=4).outputs[0]
    assert torch.equal(gen.outputs[1].waveform, one.waveform)  # the same audio, sample for sample
