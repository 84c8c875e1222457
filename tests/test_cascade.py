"""The cascade ``A|B``: the first part with a guess drafts the step. Greedy output equals greedy decoding
(Python API and CLI), the parts it is made of are the named ones (prompt lookup then needs a full n-gram
match), sampled output keeps the target's distribution, and bad names are refused."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import mmspec
from mmspec import methods
from mmspec.drafters import CascadeDrafter, PromptLookupDrafter
from mmspec.drafters.eagle import EagleDrafter
from mmspec.heads import eagle_for, save_heads, target_info
from mmspec.modalities import get
from mmspec.testing import chi2_pvalue

PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):", "x = [1, 2, 3, 1, 2, 3, 1, 2"]


@pytest.fixture(scope="module")
def target(tiny_models):
    from mmspec.text import TextTarget

    return TextTarget.from_pretrained(tiny_models["llama"], device="cpu")


def cascade(target):
    torch.manual_seed(0)
    return CascadeDrafter([PromptLookupDrafter(max_ngram=2, min_ngram=2), EagleDrafter(eagle_for(32, 32, 4, window=64))])


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_cascade_is_greedy_decoding(target, batch):
    drafter = cascade(target)
    gen = mmspec.generate(target, drafter, PROMPTS[:batch], max_new_tokens=24, k=4)
    assert torch.equal(gen.tokens, mmspec.autoregressive(target, PROMPTS[:batch], max_new_tokens=24).tokens)
    assert set(drafter.chosen) <= {-1, 0, 1} and 1 in drafter.chosen  # the heads drafted where lookup had nothing


def test_sampled_cascade_keeps_the_distribution(target):
    from test_heads import exact_runs

    sampling, runs, counts = mmspec.Sampling(temperature=1.0, top_k=3), 240, Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, cascade(target), "def", max_new_tokens=3, k=2, rule=mmspec.accept.speculative,
                              sampling=sampling, seed=seed)
        counts[tuple(gen.tokens[0, :2, 0].tolist())] += 1
    exact = exact_runs(target, "def", sampling, 2)
    assert not set(counts) - set(exact)
    assert chi2_pvalue(counts, exact, runs) > 1e-3


def test_named_cascade(target, tiny_models, tmp_path, capsys):
    text = get("text")
    folder = save_heads(eagle_for(32, 32, 4, window=64), tmp_path / "h", target_info(target))
    made = methods.make_drafter("prompt-lookup|heads", text, target=target, heads=str(folder))
    assert isinstance(made, CascadeDrafter) and made.parts[0].min_ngram == made.parts[0].max_ngram == 3
    assert methods.budget_for("prompt-lookup|heads", text, 8) == 8  # its parts can branch
    with pytest.raises(ValueError, match="either A\\+B .* or A\\|B"):
        methods.check_drafter("prompt-lookup+model|heads", text)
    with pytest.raises(ValueError, match="unknown part 'beam'"):
        methods.check_drafter("prompt-lookup|beam", text)
    from mmspec.cli import main

    argv = ["generate", "--target", tiny_models["llama"], "--prompt", PROMPTS[0], "--max-new-tokens", "12", "--json"]
    assert main(argv) == 0
    base = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(argv + ["--drafter", "prompt-lookup|heads", "--heads", str(folder), "--k", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == base
