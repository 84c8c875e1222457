"""Self-drafters on the image target (guided: two CFG halves) and the speech target (K codebooks, delay
pattern): the hidden state a target records is the one its output head turns into the forward's logits,
greedy self-drafting (Medusa and EAGLE, chains and trees, batch 2) reproduces greedy decoding frame for
frame, the training command runs end to end on each target's own samples, and ``--drafter heads`` finds
its folder or says why not."""
from __future__ import annotations

import json

import pytest
import torch

import mmspec
from mmspec.drafters.heads import EagleDrafter, MedusaDrafter, read
from mmspec.heads import MedusaHeads, eagle_for, load_heads

KINDS = ["medusa", "medusa-tree", "eagle", "eagle-tree"]


def image_target(image_zoo, guidance_scale=3.0):
    from mmspec.image import ImageTarget

    return ImageTarget.from_pretrained(str(image_zoo / "shapes"), device="cpu", guidance_scale=guidance_scale)


def speech_target(speech_folders):
    from mmspec.speech import SpeechTarget

    return SpeechTarget.from_pretrained(speech_folders["target"], device="cpu")


@pytest.fixture(params=["image", "speech"])
def case(request):
    """``(target, prompts, frames to teacher-force)`` of one modality."""
    if request.param == "image":
        target = image_target(request.getfixturevalue("image_zoo"))
        return target, target.class_names[:2], 20
    return speech_target(request.getfixturevalue("speech_folders")), ["Hello world", "Hi there, how are you"], 12


def drafter_of(kind: str, H: int):
    torch.manual_seed(2)
    if kind.startswith("medusa"):
        heads = MedusaHeads(H, 3, zero_init=False)
        return MedusaDrafter(heads, tree=7, width=3) if kind.endswith("tree") else MedusaDrafter(heads)
    layer = eagle_for(H, H, 4, window=64)
    return EagleDrafter(layer, tree=8, width=3) if kind.endswith("tree") else EagleDrafter(layer)


@torch.inference_mode()
def test_hidden_state_gives_the_forwards_logits(case):
    """Unguided image / unconstrained speech entries: output_head(hidden) equals the forward's logits."""
    target, prompts, n = case
    if getattr(target, "guided", False):
        target.guidance_scale = 1.0  # the guided mix is not one head's output; check the head on its half
    frames = mmspec.autoregressive(target, prompts, max_new_tokens=n).tokens.clamp(min=0)  # [B, n, K]
    target.track_hidden(True)
    target.start(prompts, n)
    logits = target.forward(frames)  # [B, n, K, V]
    hidden = target.hidden()
    assert hidden.shape[:2] == frames.shape[:2]
    mine = read(target.output_head(), hidden, target.num_codebooks)
    finite = logits.isfinite()  # speech masks what the delay pattern forbids
    assert finite.float().mean() > 0.3
    assert torch.allclose(mine[finite], logits[finite], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_self_drafting_is_greedy_decoding(case, kind):
    target, prompts, _ = case
    n = 30
    base = mmspec.autoregressive(target, prompts, max_new_tokens=n)
    H = target.output_head().weight.shape[1]
    gen = mmspec.generate(target, drafter_of(kind, H), prompts, max_new_tokens=n, k=3)
    assert torch.equal(gen.tokens, base.tokens) and torch.equal(gen.lengths, base.lengths)
    assert max(s.n_drafted for s in gen.steps) == {"medusa": 3, "eagle": 3}.get(kind, 7 if kind == "medusa-tree" else 8)


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_train_command_on_the_targets_own_samples(request, tmp_path, modality):
    from mmspec.heads.cli import main

    if modality == "image":
        path, make = str(request.getfixturevalue("image_zoo") / "shapes"), image_target
        target = make(request.getfixturevalue("image_zoo"))
    else:
        folders = request.getfixturevalue("speech_folders")
        path, target = folders["target"], speech_target(folders)
    out = tmp_path / "heads"
    assert main(["--target", path, "--kind", "eagle", "--out", str(out), "--time-budget", "8", "--seq-len", "16",
                 "--batch", "2", "--device", "cpu", "--max-tokens", "256"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["data"] == modality and config["num_codebooks"] == target.num_codebooks
    assert config["training"]["steps"] > 0 and 0 <= config["training"]["held_out_top1"] <= 1
    prompts = target.class_names[:2] if modality == "image" else ["Hello world"]
    base = mmspec.autoregressive(target, prompts, max_new_tokens=16)
    gen = mmspec.generate(target, load_heads(out, target, tree=6, width=2), prompts, max_new_tokens=16, k=3)
    assert torch.equal(gen.tokens, base.tokens)


def test_heads_folder_is_found_or_refused(tmp_path):
    from mmspec.methods import heads_folder
    from mmspec.modalities import get

    text = get("text")
    with pytest.raises(ValueError, match="does not exist"):
        heads_folder(text, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown text heads zoo model 'zoo:nothing'"):
        heads_folder(text, "zoo:nothing")
    assert heads_folder(text, str(tmp_path)) == str(tmp_path)


def test_cli_heads_drafter(tiny_models, tmp_path, capsys):
    from mmspec.cli import main
    from mmspec.heads import save_heads, target_info
    from mmspec.text import TextTarget

    target = TextTarget.from_pretrained(tiny_models["llama"], device="cpu")
    torch.manual_seed(0)
    save_heads(eagle_for(32, 32, 4, window=64), tmp_path / "h", target_info(target, "tiny"))
    argv = ["generate", "--target", tiny_models["llama"], "--prompt", "def add(a, b):", "--max-new-tokens", "12",
            "--json"]
    assert main(argv) == 0
    base = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(argv + ["--drafter", "heads", "--heads", str(tmp_path / "h"), "--tree", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == base
    assert main(argv + ["--drafter", "heads", "--heads", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(argv + ["--drafter", "heads+prompt-lookup", "--heads", str(tmp_path / "h"), "--tree", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == base


def test_train_command_refuses_bad_input(tmp_path, capsys):
    from mmspec.cli import main

    assert main(["heads", "train", "--target", "zoo:code-target", "--kind", "hydra", "--out", str(tmp_path)]) == 2
    assert "invalid choice: 'hydra'" in capsys.readouterr().err
    assert main(["heads", "train", "--target", str(tmp_path / "none"), "--kind", "eagle", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not load --target" in err and "text:" in err and "image:" in err and "speech:" in err
    assert main(["heads", "train", "--target", "zoo:shapes", "--modality", "video", "--kind", "eagle",
                 "--out", str(tmp_path)]) == 2
    assert "unknown modality 'video'" in capsys.readouterr().err


def test_bench_skips_heads_without_heads_for_another_target(tiny_models, tmp_path, capsys):
    from mmspec.cli import main

    assert main(["bench", "--suite", "text", "--quick", "--out", str(tmp_path), "--target", tiny_models["llama"],
                 "--prompt", "def add(a, b):\n", "--max-new-tokens", "6", "--repeats", "1",
                 "--methods", "prompt-lookup,heads", "--device", "cpu"]) == 0
    assert "skipping the self-drafting methods" in capsys.readouterr().err
    (suite,) = json.loads((tmp_path / "results.json").read_text())["suites"]
    assert [m["drafter"] for m in suite["methods"]] == ["none", "prompt-lookup"]


def test_fine_tuning_on_greedy_outputs(speech_folders, tmp_path):
    """``--init`` starts from saved heads; ``--temperature 0`` trains on the target's greedy outputs."""
    from safetensors.torch import load_file

    from mmspec.heads.cli import main

    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--target", speech_folders["target"], "--kind", "eagle", "--seq-len", "16", "--batch", "2",
              "--device", "cpu", "--max-tokens", "128"]
    assert main([*common, "--out", str(first), "--time-budget", "4"]) == 0
    assert main([*common, "--out", str(second), "--time-budget", "4", "--init", str(first), "--temperature", "0"]) == 0
    assert "temperature 0" in json.loads((second / "config.json").read_text())["training"]["data_description"]
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # trained further
    with pytest.raises(ValueError, match="holds eagle heads, not medusa"):
        main([*common, "--out", str(tmp_path / "third"), "--init", str(first), "--kind", "medusa"])
