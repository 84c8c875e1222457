"""Text adapter: greedy equivalence with plain decoding and with HF generate, rollback, pairing rules."""
from __future__ import annotations

import pytest
import torch

import mmspec
from mmspec import accept
from mmspec.text import TextTarget

PROMPTS = ["def add(a, b):", "class Stack:\n    def"]


def drafters(paths, arch):
    draft = TextTarget.from_pretrained(paths[f"{arch}-draft"] if f"{arch}-draft" in paths else paths["llama-draft"])
    return {
        "model": mmspec.ModelDrafter(draft),
        "prompt-lookup": mmspec.PromptLookupDrafter(),
        "jacobi": mmspec.JacobiDrafter(init="random"),
        "lookahead": mmspec.LookaheadDrafter(),
    }


def hf_greedy(target: TextTarget, prompts, n):
    ids, pads = target.encode(prompts)
    mask = (torch.arange(ids.shape[1])[None, :] >= pads[:, None]).long()
    out = target.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=1)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        if 0 in row:
            row = row[: row.index(0) + 1]  # HF pads after EOS (id 0 here)
        rows.append(row)
    return rows


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_equivalence(tiny_models, arch, batch, fast):
    """On both forward paths: speculative == autoregressive == HF generate (GPT-2 has no fast path: eager twice)."""
    target = TextTarget.from_pretrained(tiny_models[arch], fast=fast and arch != "gpt2")
    assert target.forward_path == ("fast" if fast and arch != "gpt2" else "eager")
    prompts = PROMPTS[:batch] if batch > 1 else PROMPTS[0]
    base = mmspec.autoregressive(target, prompts, max_new_tokens=24)
    assert base.token_ids() == hf_greedy(target, [prompts] if batch == 1 else prompts, 24)
    for name, drafter in drafters(tiny_models, arch).items():
        gen = mmspec.generate(target, drafter, prompts, max_new_tokens=24, k=4, rule=accept.greedy)
        assert gen.token_ids() == base.token_ids(), name
        assert gen.outputs == base.outputs, name
        if name == "prompt-lookup":
            assert gen.stats["steps"] <= base.stats["steps"]


def test_speculation_saves_forwards_with_a_good_draft(tiny_models):
    """The target drafting for itself is accepted everywhere: k + 1 frames per forward."""
    target = TextTarget.from_pretrained(tiny_models["llama"])
    twin = TextTarget.from_pretrained(tiny_models["llama"])
    base = mmspec.autoregressive(target, PROMPTS[0], max_new_tokens=20)
    gen = mmspec.generate(target, mmspec.ModelDrafter(twin), PROMPTS[0], max_new_tokens=20, k=4)
    assert gen.token_ids() == base.token_ids()
    assert gen.stats["acceptance_rate"] == 1.0
    assert gen.stats["steps"] < base.stats["steps"] / 3


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
def test_rollback_equals_fresh_prefill(tiny_models, fast):
    target = TextTarget.from_pretrained(tiny_models["llama"], fast=fast)
    a = torch.tensor([[5, 6, 7, 8]])[..., None]
    b = torch.tensor([[9, 10, 11]])[..., None]
    target.start(PROMPTS[0], 8)
    p0 = target.pos.clone()
    target.forward(a)
    target.keep(p0)
    got = target.forward(b)
    fresh = TextTarget.from_pretrained(tiny_models["llama"], fast=fast)
    fresh.start(PROMPTS[0], 8)
    want = fresh.forward(b)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # partial rollback inside a verified block keeps the accepted prefix
    target.keep(p0 + 1)
    torch.testing.assert_close(target.forward(b[:, 1:]), want[:, 1:], rtol=1e-4, atol=1e-4)


def test_padded_draft_embeddings_are_a_valid_pair(tiny_models):
    target = TextTarget.from_pretrained(tiny_models["llama"])
    draft = TextTarget.from_pretrained(tiny_models["llama-draft"])
    assert draft.vocab_size == target.vocab_size + 20
    gen = mmspec.generate(target, mmspec.ModelDrafter(draft), PROMPTS[0], max_new_tokens=12, k=3,
                          rule=accept.speculative, sampling=mmspec.Sampling(temperature=1.0), seed=3)
    assert int(gen.tokens.max()) < target.vocab_size


def test_different_tokenizer_is_refused(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from conftest import CODE

    other = AutoTokenizer.from_pretrained(tiny_models["llama"]).train_new_from_iterator(CODE, vocab_size=280)
    target = TextTarget.from_pretrained(tiny_models["llama"])
    draft = TextTarget.from_pretrained(tiny_models["gpt2-draft"])
    draft.tokenizer = other
    with pytest.raises(ValueError, match="tokenizer differs"):
        mmspec.generate(target, mmspec.ModelDrafter(draft), PROMPTS[0], max_new_tokens=4)


def test_eos_ends_rows(tiny_models):
    target = TextTarget.from_pretrained(tiny_models["llama"])
    target.eos_ids = torch.tensor([int(mmspec.autoregressive(target, PROMPTS[1], max_new_tokens=3).tokens[0, 2, 0])])
    gen = mmspec.generate(target, mmspec.PromptLookupDrafter(), PROMPTS, max_new_tokens=16, k=3)
    row = gen.token_ids()[1]
    assert len(row) == 3 and row[-1] == int(target.eos_ids[0])
    assert gen.tokens.shape[1] >= len(row)


@pytest.mark.parametrize("bad, match", [
    (dict(prompt=""), "prompt"),
    (dict(k=0), "k"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(seed=-1), "seed"),
    (dict(prompt="x " * 200), "context"),
])
def test_bad_input(tiny_models, bad, match):
    target = TextTarget.from_pretrained(tiny_models["llama"])
    kwargs = dict(prompt=PROMPTS[0], k=2, max_new_tokens=4, seed=0)
    kwargs.update(bad)
    prompt = kwargs.pop("prompt")
    with pytest.raises(ValueError, match=match):
        mmspec.generate(target, mmspec.JacobiDrafter(), prompt, **kwargs)


def test_missing_model_path():
    with pytest.raises(ValueError, match="does not exist"):
        TextTarget.from_pretrained("./no/such/model")
    with pytest.raises(ValueError, match="unknown text zoo model"):
        TextTarget.from_pretrained("zoo:nope")
