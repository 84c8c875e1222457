"""Image zoo recipe: procedural data, model save/load, the reference sampler, and a ``train --quick``
smoke run whose output ``load_zoo`` loads. No GPU, no network, no shipped zoo weights."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mmspec.image import shapes
from mmspec.image.models import (META_FILE, ShapesClassifier, build_transformer, build_vqvae, decode_codes,
                                 encode_images, guided_logits, load_zoo, sample_codes)


# ------------------------------------------------------------------------------------------- data
def test_render_is_deterministic_and_balanced():
    a, la = shapes.render(0, 7)
    b, lb = shapes.render(0, 7)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b) and la == lb == 7 % shapes.NUM_CLASSES
    assert not np.array_equal(a, shapes.render(1, 7)[0])  # the seed matters


def test_make_dataset_ranges_and_workers_agree():
    x, y = shapes.make_dataset(40, seed=3, workers=1)
    x2, y2 = shapes.make_dataset(10, seed=3, start=30, workers=1)
    assert x.shape == (40, 32, 32, 3) and y.tolist() == [i % shapes.NUM_CLASSES for i in range(40)]
    assert np.array_equal(x[30:], x2) and np.array_equal(y[30:], y2)
    xp, yp = shapes.make_dataset(1100, seed=3, workers=2)  # two chunks: a process pool
    assert np.array_equal(xp[:40], x) and np.array_equal(yp[:40], y)


def test_images_show_the_class_colour():
    """The shape's colour channel dominates where the image differs most from its border."""
    channel = {"red": 0, "green": 1, "blue": 2}
    for i in range(48):
        img, label = shapes.render(5, i)
        colour = shapes.CLASS_NAMES[label].split()[0]
        if colour in channel:
            centre_px = img.reshape(-1, 3).astype(int)
            far = np.abs(centre_px - np.median(centre_px, axis=0)).sum(1).argmax()
            assert centre_px[far].argmax() == channel[colour], (i, shapes.CLASS_NAMES[label])


def test_class_names_and_errors():
    assert 16 <= shapes.NUM_CLASSES <= 32 and len(set(shapes.CLASS_NAMES)) == shapes.NUM_CLASSES
    assert shapes.class_index("red ring") == shapes.CLASS_NAMES.index("red ring")
    assert shapes.class_index("  Blue   Cross ") == shapes.CLASS_NAMES.index("blue cross")
    with pytest.raises(ValueError, match="allowed: red disk"):
        shapes.class_index("purple ring")


# ----------------------------------------------------------------------------------------- models
def test_classifier_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ShapesClassifier(shapes.NUM_CLASSES, channels=(8, 8, 8)).eval()
    model.save(str(tmp_path / "cls"))
    loaded = ShapesClassifier.from_pretrained(str(tmp_path / "cls"))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.allclose(model(x), loaded(x), atol=2e-2)  # saved as fp16
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["num_classes"] == shapes.NUM_CLASSES


def test_vq_round_trip_shapes():
    torch.manual_seed(0)
    vq = build_vqvae((8, 8, 16), num_codes=16, embed_dim=4).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = encode_images(vq, x)  # [2, 8, 8]
    assert codes.shape == (2, 8, 8) and int(codes.max()) < 16
    images = decode_codes(vq, codes)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    # decoding our codes matches VQModel's own quantise-then-decode path
    ref = vq.decode(vq.encode(x).latents).sample.clamp(-1, 1)
    assert torch.allclose(images, ref, atol=1e-4)


def test_greedy_sampling_with_cache_matches_teacher_forcing():
    torch.manual_seed(0)
    n_codes, n_cls = 16, 3
    model = build_transformer(n_codes + n_cls + 1, 32, 2, 2, 17).eval()
    cls = torch.tensor([n_codes, n_codes + 2])
    for scale in (1.0, 3.0):
        codes = sample_codes(model, cls, n_codes + n_cls, n_codes, 16, cfg_scale=scale, temperature=0.0)
        assert codes.shape == (2, 16) and int(codes.max()) < n_codes
        logits = guided_logits(model, cls, codes, n_codes + n_cls, n_codes, scale)  # [2, 16, 16]
        assert torch.equal(logits.argmax(-1), codes)


# ------------------------------------------------------------------------------------ smoke run
@pytest.mark.slow
def test_train_quick_then_load_and_evaluate(tmp_path):
    from mmspec.image import recipe

    out, ckpt = tmp_path / "zoo", tmp_path / "ckpt"
    recipe.main(["train", "--quick", "--device", "cpu", "--out", str(out), "--ckpt-dir", str(ckpt),
                 "--time-budget", "45", "--workers", "1"])
    zoo = load_zoo(str(out / "shapes"))
    draft = load_zoo(str(out / "shapes-draft"))
    meta = zoo.meta
    # 1. layout: codes, then class tokens, then the null token; both folders agree
    assert meta["class_names"] == list(shapes.CLASS_NAMES) and draft.meta["class_names"] == meta["class_names"]
    assert meta["class_token_ids"][0] == meta["num_codes"] and meta["null_token_id"] == meta["vocab_size"] - 1
    assert zoo.transformer.config.vocab_size == draft.transformer.config.vocab_size == meta["vocab_size"]
    assert zoo.class_token_id("red ring") == meta["class_token_ids"][shapes.class_index("red ring")]
    # 2. weights are fp16 safetensors in standard folders; the draft finds the target's VQ tokenizer
    assert os.path.exists(out / "shapes" / "transformer" / "model.safetensors")
    assert os.path.exists(out / "shapes" / "vqvae" / "diffusion_pytorch_model.safetensors")
    assert draft.vqvae is not None and draft.classifier is None and zoo.classifier is not None
    # 3. VQ round trip shapes
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = encode_images(zoo.vqvae, x)
    assert codes.shape == (2, meta["grid_h"], meta["grid_w"]) and int(codes.max()) < meta["num_codes"]
    assert decode_codes(zoo.vqvae, codes).shape == (2, 3, 32, 32)
    # 4. resume: a second run finds every stage finished in its checkpoints and only re-saves
    log = json.loads((out / "shapes" / "training.json").read_text())
    assert {"classifier", "vqvae", "target", "draft"} <= set(log)
    recipe.main(["train", "--quick", "--device", "cpu", "--out", str(out), "--ckpt-dir", str(ckpt),
                 "--time-budget", "45", "--workers", "1"])
    again = json.loads((out / "shapes" / "training.json").read_text())
    assert [again[k]["steps"] for k in ("vqvae", "target", "draft")] == [log[k]["steps"] for k in ("vqvae", "target", "draft")]
    # 5. evaluate writes model cards, samples and the chosen guidance scale
    recipe.main(["evaluate", "--out", str(out), "--per-class", "1", "--scales", "1,2", "--n-heldout", "24"])
    for d in ("shapes", "shapes-draft"):
        assert (out / d / "README.md").read_text().startswith("# shapes")
        assert (out / d / "samples.png").exists()
        assert json.loads((out / d / META_FILE).read_text())["default_cfg_scale"] == 2.0
