"""Image adapter on tiny random models: greedy equivalence of every method, CFG and its rollback,
constraints, SJD / LANTERN distributions, the CLI and bad input. No zoo weights are needed."""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
from builders import CLASSES, GRID, N_CODES, tiny_meta
from mmspec.image import ImageTarget, SpatialInit, lantern_rule, neighbour_table
from mmspec.image.models import guided_logits, sample_codes
from PIL import Image

import mmspec
from mmspec import Sampling, accept
from mmspec.drafters.coupled import CoupledJacobiDrafter
from mmspec.drafters.proactive import ProactiveDrafter
from mmspec.testing import ToyTarget, chi2_pvalue


@pytest.fixture(scope="module")
def models(image_models):  # tests/builders.py, one copy per session
    return image_models


def target_of(models, which="target", **kw):
    model, vq = models[which]
    return ImageTarget(model, vq, tiny_meta(), **kw)


def methods(models, target):
    return {
        "jacobi-random": mmspec.JacobiDrafter("random"),
        "jacobi-left": mmspec.JacobiDrafter(SpatialInit("left")),
        "jacobi-above": mmspec.JacobiDrafter(SpatialInit("above").bind(target)),
        "model": mmspec.ModelDrafter(target_of(models, "draft", guidance_scale=target.guidance_scale)),
        "prompt-lookup": mmspec.PromptLookupDrafter(),
        "lookahead": mmspec.LookaheadDrafter(),
    }


# -- equivalence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_greedy_equivalence_every_method(models, batch, cfg, fast):
    """On both forward paths: every drafter == autoregressive == the reference sampler over the HF model."""
    target = target_of(models, guidance_scale=cfg, fast=fast)
    assert target.forward_path == ("fast" if fast else "eager")
    prompts = CLASSES[:batch]
    base = mmspec.autoregressive(target, prompts, max_new_tokens=64)
    assert base.tokens.shape == (batch, GRID * GRID, 1)  # stops at the full grid
    ref = sample_codes(models["target"][0], target.encode(prompts), target.null_id, N_CODES, GRID * GRID,
                       cfg_scale=cfg, temperature=0.0)
    assert base.tokens[..., 0].tolist() == ref.tolist()
    for name, drafter in methods(models, target).items():
        for k in (3, 16):
            gen = mmspec.generate(target, drafter, prompts, max_new_tokens=64, k=k, rule=accept.greedy)
            assert gen.token_ids() == base.token_ids(), (name, k)
            assert gen.stats["steps"] <= base.stats["steps"], (name, k)
    assert [im.size for im in base.outputs] == [(32, 32)] * batch


def test_guidance_interval_guides_only_inside(models):
    target = target_of(models, guidance_scale=4.0, guidance_interval=(0.0, 0.5))
    cls = target.encode(["red ring"])
    base = mmspec.autoregressive(target, ["red ring"], max_new_tokens=64)
    codes = base.tokens[..., 0]
    guided = guided_logits(models["target"][0], cls, codes, target.null_id, N_CODES, 4.0)[0]  # [16, V]
    plain = guided_logits(models["target"][0], cls, codes, target.null_id, N_CODES, 1.0)[0]
    half = GRID * GRID // 2
    assert codes[0, :half].tolist() == guided[:half].argmax(-1).tolist()
    assert codes[0, half:].tolist() == plain[half:].argmax(-1).tolist()
    gen = mmspec.generate(target, mmspec.JacobiDrafter(), ["red ring"], max_new_tokens=64, k=5)
    assert gen.token_ids() == base.token_ids()


# -- guidance, rollback, constraint --------------------------------------------------------------

def test_guidance_one_is_the_unguided_model(models):
    target = target_of(models, guidance_scale=1.0)
    model = models["target"][0]
    codes = torch.randint(0, N_CODES, (2, 6))
    first = target.start(["red ring", "green disk"], 16)  # [2, 1, 1, V]
    rest = target.forward(codes[:, :5, None])  # [2, 5, 1, V]
    got = torch.cat([first, rest], dim=1)[:, :, 0]
    want = model(input_ids=torch.cat([target.encode(["red ring", "green disk"])[:, None], codes[:, :5]], 1)).logits
    torch.testing.assert_close(got, want[..., :N_CODES].float(), atol=1e-4, rtol=1e-4)
    assert target.cache.length == 6 and target.cache.rows == 2  # B rows, no uncond half


def test_guided_logits_match_the_reference(models):
    target = target_of(models, guidance_scale=2.5)
    codes = torch.randint(0, N_CODES, (2, 7))
    cls = target.encode(["blue cross", "red ring"])
    got = torch.cat([target.start(["blue cross", "red ring"], 16), target.forward(codes[:, :6, None])], dim=1)[:, :, 0]
    want = guided_logits(models["target"][0], cls, codes, target.null_id, N_CODES, 2.5)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rollback_of_both_guidance_halves_equals_a_fresh_prefill(models):
    target = target_of(models, guidance_scale=3.0)
    codes = torch.randint(0, N_CODES, (2, 9, 1), generator=torch.Generator().manual_seed(3))
    target.start(CLASSES[:2], 16)
    target.forward(codes[:, :4])
    target.forward(torch.randint(0, N_CODES, (2, 5, 1)))  # a rejected draft
    target.keep(target.pos - 5)
    assert target.cache.length == 5 and target.pos.tolist() == [5, 5]
    after = target.forward(codes[:, 4:])  # [2, 5, 1, V]
    fresh = target_of(models, guidance_scale=3.0)
    fresh.start(CLASSES[:2], 16)
    want = fresh.forward(codes)[:, 4:]
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-5)
    assert target.cache.rows == 4  # cond + uncond rows, cropped together


def test_constraint_keeps_every_code_in_range(models):
    target = target_of(models, guidance_scale=5.0)
    assert target.vocab_size == N_CODES < models["target"][0].config.vocab_size
    for drafter in (None, mmspec.JacobiDrafter("random")):
        gen = mmspec.generate(target, drafter, CLASSES[:2], max_new_tokens=64, k=6, rule=accept.speculative,
                              sampling=Sampling(temperature=3.0), seed=4)
        assert gen.tokens.shape[1] == GRID * GRID
        assert bool((gen.tokens >= 0).all()) and bool((gen.tokens < N_CODES).all())


def test_spatial_inits():
    seq = torch.arange(6)[None, :, None]  # cells 0..5 of a width-4 grid
    assert SpatialInit("left")(seq, 3)[0, :, 0].tolist() == [5, 5, 5]
    assert SpatialInit("above", width=4)(seq, 4)[0, :, 0].tolist() == [2, 3, 4, 5]  # cells 6..9 copy 2..5
    assert SpatialInit("above", width=4)(seq[:, :2], 3)[0, :, 0].tolist() == [1, 1, 0]  # row 0: left; cell 4: cell 0
    with pytest.raises(ValueError, match="width"):
        SpatialInit("above")(seq, 2)


# -- distributions -------------------------------------------------------------------------------



def toy_counts(target, make, rule, runs, n=3, k=3):
    p = torch.tensor([[[1], [2], [0]]])
    counts = Counter()
    for seed in range(runs):
        gen = mmspec.generate(target, make(), p, max_new_tokens=n, k=k, rule=rule, sampling=Sampling(1.0), seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    return counts, target.distribution(p, n)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["random", "above"])
def test_sjd_matches_the_target_distribution(init):
    target = ToyTarget(vocab_size=4, seed=5, sharpness=1.5)
    make = lambda: mmspec.JacobiDrafter("random" if init == "random" else SpatialInit("above", width=2))  # noqa: E731
    counts, probs = toy_counts(target, make, accept.speculative, 1500)
    assert chi2_pvalue(counts, probs, 1500) > 1e-3


@pytest.mark.slow
def test_lantern_delta_zero_is_speculative_sampling(models):
    target = ToyTarget(vocab_size=4, seed=5, sharpness=1.5)
    table = neighbour_table(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 2)
    counts, probs = toy_counts(target, lambda: mmspec.JacobiDrafter("random"), lantern_rule(table, 0.0), 1500)
    assert chi2_pvalue(counts, probs, 1500) > 1e-3
    # on the image target: the same tokens as accept.speculative, seed for seed
    image = target_of(models, guidance_scale=2.0)
    for seed in range(3):
        kw = dict(max_new_tokens=64, k=8, sampling=Sampling(temperature=1.0), seed=seed)
        a = mmspec.generate(image, mmspec.JacobiDrafter(), CLASSES[:2], rule=accept.speculative, **kw)
        b = mmspec.generate(image, mmspec.JacobiDrafter(), CLASSES[:2], rule=lantern_rule(table_of(image), 0.0), **kw)
        assert a.token_ids() == b.token_ids()


def table_of(image):
    return neighbour_table(image.codebook(), 8)


def test_lantern_accepts_more_and_is_labelled_lossy(models):
    image = target_of(models, guidance_scale=1.0)
    rates = {}
    for delta in (0.0, 0.3):
        rule = lantern_rule(table_of(image), delta)
        assert "LOSSY" in rule.__doc__ and f"delta = {delta:g}" in rule.spec.bound and rule.lossless is False
        acc = [mmspec.generate(image, mmspec.JacobiDrafter(), CLASSES, max_new_tokens=64, k=8, rule=rule,
                               sampling=Sampling(temperature=2.0), seed=s).stats["acceptance_rate"] for s in range(4)]
        rates[delta] = sum(acc) / len(acc)
    assert rates[0.3] > rates[0.0]


def test_lantern_one_step_distortion_is_bounded():
    """One step, many rows at once: delta = 0 is exact; delta > 0 moves the committed frame's distribution
    by at most sum_y min(delta, (q - p)+(y)) (<= TV(p, q)), which may exceed delta itself."""
    from mmspec import Draft, Sampler

    V, N, delta = 8, 40000, 0.15
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 1, V, generator=g).expand(N, 2, 1, V)  # [N, D + 1, K, V]
    q = torch.softmax(torch.randn(V, generator=g) * 2, -1)
    sampler = Sampler(Sampling(temperature=1.0), seed=3)
    x = torch.multinomial(q, N, replacement=True, generator=g).view(N, 1, 1)
    table = neighbour_table(torch.randn(V, 2, generator=g), V - 1)
    p = torch.softmax(logits[0, 0, 0], -1)
    for d in (0.0, delta):
        bound = float(torch.clamp((q - p).clamp(min=0), max=d).sum())
        verdict = lantern_rule(table, d)(Draft(x, q.expand(N, 1, 1, V)), logits, sampler, torch.zeros(N, dtype=torch.long))
        freq = torch.bincount(verdict.tokens[:, 0, 0], minlength=V).float() / N
        tv = 0.5 * float((freq - p).abs().sum())
        assert tv <= bound + 0.015, (d, tv, bound)
        if d > 0:
            assert tv > 0.05  # it is lossy


def test_neighbour_table_is_sorted_and_excludes_self():
    book = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    table = neighbour_table(book, 3)
    assert table.tolist() == [[1, 2, 3], [0, 2, 3], [1, 0, 3], [2, 1, 0]]
    with pytest.raises(ValueError, match="k_nb"):
        neighbour_table(book, 4)


# -- bad input -----------------------------------------------------------------------------------

def test_bad_input(models):
    target = target_of(models)
    with pytest.raises(ValueError, match="unknown class 'purple ring'; allowed: red ring, blue cross"):
        mmspec.autoregressive(target, "purple ring", max_new_tokens=4)
    with pytest.raises(ValueError, match="k .* >= 1"):
        mmspec.generate(target, mmspec.JacobiDrafter(), "red ring", max_new_tokens=4, k=0)
    with pytest.raises(ValueError, match="guidance scale"):
        target_of(models, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="interval"):
        target_of(models, guidance_interval=(0.6, 0.2))
    with pytest.raises(ValueError, match="image size"):
        target_of(models, image_size=64)
    bad = dict(tiny_meta(), grid_h=8, grid_w=8)
    with pytest.raises(ValueError, match="grid"):
        ImageTarget(models["target"][0], models["target"][1], bad)
    with pytest.raises(ValueError, match="layout"):
        target.check_draft(ImageTarget(models["draft"][0], None, dict(tiny_meta(), class_token_ids=[16, 18, 17])))
    with pytest.raises(ValueError, match="delta"):
        lantern_rule(torch.zeros(4, 2, dtype=torch.long), 1.5)


# -- the CLI and the notebook API ------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_dir(image_zoo):
    """A zoo-format folder pair saved from the tiny models (loaded back through from_pretrained)."""
    return image_zoo


def test_cli_generate_writes_pngs_and_json(zoo_dir, tmp_path, capsys):
    from mmspec.cli import main

    out = str(tmp_path / "image.png")
    rc = main(["generate", "--modality", "image", "--target", str(zoo_dir / "shapes"), "--prompt", "red ring",
               "--drafter", "jacobi", "--init", "above", "--rule", "speculative", "--temperature", "1", "--k", "16",
               "--guidance-scale", "3.0", "--seed", "0", "--batch", "2", "--out", out, "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == [str(tmp_path / "image_0.png"), str(tmp_path / "image_1.png")]
    assert all(os.path.exists(f) for f in result["files"])
    assert all(Image.open(f).size == (32, 32) for f in result["files"])
    assert len(result["token_ids"][0]) == GRID * GRID and result["lossless"] is True
    rc = main(["generate", "--modality", "image", "--target", str(zoo_dir / "shapes"), "--draft",
               str(zoo_dir / "shapes-draft"), "--drafter", "model", "--prompt", "blue cross", "--out", out])
    assert rc == 0 and os.path.exists(out)
    assert main(["generate", "--modality", "image", "--target", str(zoo_dir / "shapes"), "--prompt", "pink x"]) == 2
    assert "allowed: red ring" in capsys.readouterr().err
    assert main(["generate", "--modality", "image", "--target", str(zoo_dir / "shapes"), "--guidance-scale", "-2"]) == 2
    assert "guidance" in capsys.readouterr().err


def test_notebook_api(zoo_dir):
    import mmspec.image

    models = mmspec.modalities.Models(max_models=1)
    gen = mmspec.image.generate("green disk", "jacobi", "speculative", temperature=1.0, target=str(zoo_dir / "shapes"),
                                init="left", seed=1, models=models)
    assert gen.outputs[0].size == (32, 32) and gen.tokens.shape[1] == GRID * GRID  # the full grid by default
    lan = mmspec.image.generate("green disk", "jacobi", "lantern", temperature=1.0, target=str(zoo_dir / "shapes"),
                                seed=1, models=models, options={"delta": 0.2})
    assert lan.tokens.shape[1] == GRID * GRID and len(models) == 1  # the loaded target was reused
    base = mmspec.image.generate(["green disk", "red ring"], target=str(zoo_dir / "shapes"), models=models)
    assert base.tokens.shape[0] == 2
    with pytest.raises(ValueError, match="unknown rule"):
        mmspec.image.generate("green disk", "jacobi", "relaxed", models=models)


# -- Janus (HF JanusForConditionalGeneration), tiny random config ------------------------------------

@pytest.fixture(scope="module")
def janus(janus_models):
    return janus_models


@pytest.mark.parametrize("rows", [[[2, 10, 11, 12, 5]], [[2, 10, 11, 12, 5], [2, 20, 5]]])
def test_janus_greedy_equivalence_with_its_own_image_generation(janus, rows):
    from mmspec.image.janus import JanusTarget

    model, draft_model = janus
    L = max(len(r) for r in rows)
    ids = torch.tensor([[1] * (L - len(r)) + r for r in rows])  # left-padded with the pad id 1
    ref = model.generate(ids, attention_mask=(ids != 1).long(), generation_mode="image", do_sample=False,
                         guidance_scale=3.0)  # [B, 16]
    target = JanusTarget(model, guidance_scale=3.0)
    base = mmspec.autoregressive(target, rows, max_new_tokens=100)
    assert base.tokens[..., 0].tolist() == ref.tolist()
    drafters = {"jacobi": mmspec.JacobiDrafter(), "above": mmspec.JacobiDrafter(SpatialInit("above").bind(target)),
                "prompt-lookup": mmspec.PromptLookupDrafter(), "lookahead": mmspec.LookaheadDrafter(),
                "model": mmspec.ModelDrafter(JanusTarget(draft_model, guidance_scale=3.0)),
                "coupled": CoupledJacobiDrafter(SpatialInit("above")), "proactive": ProactiveDrafter()}
    for name, drafter in drafters.items():
        gen = mmspec.generate(target, drafter, rows, max_new_tokens=100, k=5, rule=accept.greedy)
        assert gen.token_ids() == base.token_ids(), name
    assert [im.size for im in base.outputs] == [(16, 16)] * len(rows)


def test_janus_sampling_lantern_and_loading(janus, tmp_path):
    from mmspec.image.janus import JanusTarget

    model, _ = janus
    target = JanusTarget(model, guidance_scale=2.0)
    rows = [[2, 10, 11, 12, 5], [2, 20, 21, 22, 5]]
    for rule in (accept.speculative, lantern_rule(neighbour_table(target.codebook(), 4), 0.0)):
        for drafter in (mmspec.JacobiDrafter(), CoupledJacobiDrafter(SpatialInit("above"), "gumbel"), ProactiveDrafter()):
            gen = mmspec.generate(target, drafter, rows, max_new_tokens=100, k=6, rule=rule,
                                  sampling=Sampling(temperature=1.0), seed=2)
            assert gen.tokens.shape == (2, 16, 1) and bool((gen.tokens < target.vocab_size).all())
    model.save_pretrained(tmp_path / "janus")
    loaded = JanusTarget.from_pretrained(str(tmp_path / "janus"), guidance_scale=2.0, device="cpu")
    assert isinstance(loaded, JanusTarget) and loaded.grid_tokens == 16
    with pytest.raises(ValueError, match="token ids"):
        loaded.start("a red ring", 16)  # no processor saved: text prompts need one
