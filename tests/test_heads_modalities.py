"""Self-drafters on the image target (guided: two CFG halves) and the speech target (K codebooks, delay
pattern), and on the Hugging Face Janus (guided, MLP generation head) and MusicGen (guided, K heads, delay
pattern) adapters (the hidden-state contract itself is in the conformance suite, ``mmspec.testing``): under
guidance the state is the conditional rows', greedy self-drafting (Medusa and EAGLE, chains and trees, batch 2) reproduces greedy decoding frame
for frame, the training command runs end to end on each target's own samples, and ``--drafter heads`` finds
its folder or says why not."""
from __future__ import annotations

import json

import pytest
import torch

import mmspec
from mmspec.drafters import EagleDrafter, MedusaDrafter
from mmspec.drafters.int8 import Int8Head
from mmspec.drafters.selfdraft import read
from mmspec.heads import MedusaHeads, eagle_for, load_heads, target_info

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


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_self_drafting_is_greedy_decoding(case, kind):
    target, prompts, _ = case
    n = 30
    base = mmspec.autoregressive(target, prompts, max_new_tokens=n)
    H = target.output_head().hidden_size
    gen = mmspec.generate(target, drafter_of(kind, H), prompts, max_new_tokens=n, k=3)
    assert torch.equal(gen.tokens, base.tokens) and torch.equal(gen.lengths, base.lengths)
    assert max(s.n_drafted for s in gen.steps) == {"medusa": 3, "eagle": 3}.get(kind, 7 if kind == "medusa-tree" else 8)


# -- Hugging Face adapters: Janus and MusicGen (tiny random models from tests/builders.py) -------------

@pytest.fixture(params=["janus", "musicgen"])
def hf_case(request):
    """``(make(guidance_scale) -> target, prompts, frames to generate)`` of one Hugging Face adapter."""
    if request.param == "janus":
        from mmspec.image.janus import JanusTarget

        model = request.getfixturevalue("janus_models")[0]
        return (lambda scale: JanusTarget(model, guidance_scale=scale)), [[2, 10, 11, 12, 5], [2, 20, 5]], 16
    from mmspec.speech import MusicgenTarget

    model, tokenizer = request.getfixturevalue("musicgen_models")[0], request.getfixturevalue("tokenizer")
    return (lambda scale: MusicgenTarget(model, tokenizer, guidance_scale=scale)), ["hello world", "for i in range"], 14


@torch.inference_mode()
def test_hf_hidden_state_is_the_conditional_half_under_its_head(hf_case):
    """Guided: ``hidden()`` is the conditional rows' state; through ``output_head`` it gives the unguided
    forward's logits (codes; MusicGen's pad column is never predicted), and the head and embedding are the
    target's own modules, left as they are by ``Int8Head.of`` and fingerprinted by ``target_info``."""
    make, prompts, n = hf_case
    guided, plain = make(3.0), make(1.0)
    frames = mmspec.autoregressive(guided, prompts, max_new_tokens=n).tokens.clamp(min=0)[:, :-1]  # [B, n - 1, K]
    guided.track_hidden(True)
    guided.start(prompts, n)
    guided_logits = guided.forward(frames)  # [B, n - 1, K, V]
    hidden = guided.hidden()  # [B, n - 1, H]
    plain.start(prompts, n)
    logits = plain.forward(frames)  # [B, n - 1, K, V] unguided: the conditional rows' own logits
    head = guided.output_head()
    assert hidden.shape == (*frames.shape[:2], head.hidden_size)
    mine = read(head, hidden, guided.num_codebooks)  # [B, n - 1, K, V]
    codes = guided.vocab_size - (1 if guided.num_codebooks > 1 else 0)  # MusicGen: the last id is the delay pad
    finite = logits[..., :codes].isfinite()  # MusicGen masks what the delay pattern forbids
    assert finite.float().mean() > 0.5
    error = float((mine - logits)[..., :codes][finite].abs().max())
    assert error < 1e-4
    # not the guided mix, nor the unconditional half (u = c - (guided - c) / (s - 1) is as far from c)
    assert float((mine - guided_logits)[..., :codes][finite].abs().max()) > max(1e-3, 10 * error)
    if codes < guided.vocab_size:  # the pad column: the lowest finite logit, never a draft
        assert bool((mine[..., codes:] == torch.finfo(mine.dtype).min).all())
    # frozen modules of the target, not copies; no int8 rewrite of a head that is not one linear map
    assert all(any(p is q for q in guided.model.parameters()) for p in head.parameters())
    assert Int8Head.of(head) is head
    info = target_info(guided)
    assert info["hidden_size"] == hidden.shape[-1] and info["num_codebooks"] == guided.num_codebooks
    assert all(any(p is q for q in guided.model.parameters()) for p in guided.input_embeddings().parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_hf_greedy_self_drafting_is_greedy_decoding(hf_case, kind):
    make, prompts, n = hf_case
    target = make(3.0)
    base = mmspec.autoregressive(target, prompts, max_new_tokens=n)
    H, E = target.output_head().hidden_size, target.input_embeddings().embed_size
    torch.manual_seed(2)
    if kind.startswith("medusa"):
        heads = MedusaHeads(H, 3, zero_init=False)
        drafter = MedusaDrafter(heads, tree=7, width=3) if kind.endswith("tree") else MedusaDrafter(heads)
    else:  # MusicGen's H = 16 gives an MLP of 40: maps the CPU int8 kernel cannot take stay in float
        layer = eagle_for(H, E, 4, window=64)
        drafter = EagleDrafter(layer, tree=7, width=3) if kind.endswith("tree") else EagleDrafter(layer)
    gen = mmspec.generate(target, drafter, prompts, max_new_tokens=n, k=3)
    assert torch.equal(gen.tokens, base.tokens) and torch.equal(gen.lengths, base.lengths)
    assert max(s.n_drafted for s in gen.steps) == (7 if kind.endswith("tree") else 3)


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


def test_train_command_on_a_musicgen_folder(musicgen_models, tokenizer, tmp_path):
    """A Hugging Face MusicGen folder trains through the same command (its own samples) and drafts exactly."""
    from mmspec.heads.cli import main
    from mmspec.speech import MusicgenTarget

    folder = tmp_path / "musicgen"
    musicgen_models[0].save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "heads"
    assert main(["--target", str(folder), "--kind", "eagle", "--out", str(out), "--time-budget", "6", "--seq-len",
                 "16", "--batch", "2", "--device", "cpu", "--max-tokens", "128"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["steps"] > 0 and config["num_codebooks"] == musicgen_models[0].decoder.num_codebooks
    target = MusicgenTarget.from_pretrained(str(folder), device="cpu")
    base = mmspec.autoregressive(target, ["hello world"], max_new_tokens=12)
    gen = mmspec.generate(target, load_heads(out, target), ["hello world"], max_new_tokens=12, k=3)
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
