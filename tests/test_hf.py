"""mmspec.hf and the adapter fixes that rest on it: one device/dtype policy, model-kind checks before
anything is built, guidance defaults read from the model, the guidance mix and the shared grid padding."""
from __future__ import annotations

import pytest
import torch

from mmspec import PAD, hf


def test_device_policy():
    assert hf.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert hf.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be cpu, cuda"):
        hf.resolve_device("nosuch")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device .*'cuda'"):
            hf.resolve_device("cuda")


def test_dtype_policy():
    assert hf.resolve_dtype(None, "cpu") is torch.float32
    assert hf.resolve_dtype("bfloat16", "cpu") is torch.bfloat16 and hf.resolve_dtype(torch.float16, "cpu") is torch.float16
    assert hf.resolve_dtype("auto", "cpu") == "auto"
    for bad in ("float64", torch.int8, 3, "fp16"):
        with pytest.raises(ValueError, match="dtype must be"):
            hf.resolve_dtype(bad, "cpu")


def test_guide_and_interval():
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert hf.guide(cond, uncond, 3.0).tolist() == [[4.0, -2.0]]
    inside = hf.inside_interval(torch.arange(4), 4, (0.0, 0.5))  # [T]
    assert inside.tolist() == [True, True, False, False]
    assert torch.equal(hf.guide(cond.expand(4, 2), uncond.expand(4, 2), 3.0, inside[:, None])[2:], cond.expand(2, 2))
    with pytest.raises(ValueError, match="guidance_scale"):
        hf.check_guidance(-1.0)
    with pytest.raises(ValueError, match="guidance_interval"):
        hf.check_guidance(2.0, (0.6, 0.2))


def test_guidance_object_validates_switches_and_mixes():
    """One Guidance for every guided adapter: the checks above, when the doubled batch runs, and the mix."""
    cond, uncond = torch.tensor([[[2.0, 0.0]] * 4]), torch.tensor([[[1.0, 1.0]] * 4])  # [1, T=4, V=2] each
    half = hf.Guidance.of(3.0, (0.0, 0.5))
    mixed = half.mix(torch.cat([cond, uncond]), 1, torch.arange(4)[None], 4)  # [1, 4, 2]
    assert mixed[0, :2].tolist() == [[4.0, -2.0]] * 2 and torch.equal(mixed[0, 2:], cond[0, 2:])  # outside: cond
    assert hf.Guidance.of(1.0).on is False and hf.Guidance.of(0.5).on is True  # below 1 still guides (image)
    assert hf.Guidance.of(0.5, above_one=True).on is False  # MusicGen, as HF generate: only above 1
    assert torch.equal(hf.Guidance.of(1.0).mix(cond, 1), cond)  # off: the conditional rows as they are
    for bad in (-1.0, True, "3", float("inf")):
        with pytest.raises(ValueError, match="guidance_scale"):
            hf.Guidance.of(bad)


def test_left_pad_mask_positions():
    ids, pads = hf.left_pad([[5, 6, 7], [8]], 0, "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and pads.tolist() == [0, 2]
    assert hf.padding_mask(pads, 3).tolist() == [[1, 1, 1], [0, 0, 1]]
    assert hf.position_ids(-pads, 3).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_unfinished_grids_are_padded_with_code_zero():
    from mmspec.image.target import grid_codes

    frames = torch.tensor([[[3], [4], [PAD]], [[5], [6], [7]]])
    assert grid_codes(frames, torch.tensor([2, 3]), 4).tolist() == [[3, 4, 0, 0], [5, 6, 7, 0]]


def test_from_pretrained_refuses_the_wrong_kind_before_building(tiny_models, janus_models, musicgen_models,
                                                               tokenizer, tmp_path):
    from mmspec.image.janus import JanusTarget
    from mmspec.speech import MusicgenTarget
    from mmspec.text import TextTarget

    janus, mg = tmp_path / "janus", tmp_path / "mg"
    janus_models[0].save_pretrained(janus)
    musicgen_models[0].save_pretrained(mg)
    with pytest.raises(ValueError, match="'llama' model, not a Janus model"):
        JanusTarget.from_pretrained(tiny_models["llama"], device="cpu")
    with pytest.raises(ValueError, match="'llama' model, not a MusicGen model"):
        MusicgenTarget.from_pretrained(tiny_models["llama"], device="cpu")
    for folder, kind in ((janus, "janus"), (mg, "musicgen")):
        with pytest.raises(ValueError, match=f"'{kind}' model, not a text causal LM"):
            TextTarget.from_pretrained(str(folder), device="cpu")
    with pytest.raises(ValueError, match="device"):
        TextTarget.from_pretrained(tiny_models["llama"], device="nosuch")
    with pytest.raises(ValueError, match="dtype"):
        TextTarget.from_pretrained(tiny_models["llama"], dtype="float64")


def test_image_folder_of_another_kind_is_refused(tiny_models, image_zoo, tmp_path):
    from mmspec.image import ImageTarget

    with pytest.raises(ValueError, match="not an mmspec image model folder"):
        ImageTarget.from_pretrained(tiny_models["llama"], device="cpu")
    with pytest.raises(ValueError, match="device"):
        ImageTarget.from_pretrained(str(image_zoo / "shapes"), device="nosuch")


def test_guidance_defaults_come_from_the_model(janus_models, musicgen_models, tokenizer, tmp_path):
    import copy

    from mmspec.image.janus import JanusTarget
    from mmspec.speech import MusicgenTarget

    model = musicgen_models[0]
    saved = model.generation_config.guidance_scale
    try:
        model.generation_config.guidance_scale = 1.5
        assert MusicgenTarget(model, tokenizer).guidance_scale == 1.5  # the model's own, not 3.0
        assert MusicgenTarget(model, tokenizer, guidance_scale=2.0).guidance_scale == 2.0
        model.generation_config.guidance_scale = None
        t = MusicgenTarget(model, tokenizer)
        assert t.guidance_scale == 3.0 and t.guided
        model.generation_config.guidance_scale = 1.0
        assert not MusicgenTarget(model, tokenizer).guided
    finally:
        model.generation_config.guidance_scale = saved
    janus = copy.deepcopy(janus_models[0])
    janus.generation_config.guidance_scale = 0.0
    assert JanusTarget(janus).guidance_scale == 0.0  # a saved 0 stays 0
    janus.generation_config.guidance_scale = None
    assert JanusTarget(janus).guidance_scale == 5.0
