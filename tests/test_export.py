"""``mmspec heads export``: the exported files, read by their engine key names through a reference forward
written from the engines' model code (vLLM ``llama_eagle.py`` / ``medusa.py``, SGLang ``llama_eagle.py``),
reproduce mmspec's own drafter on tiny Llama and Qwen2 targets: the greedy draft tokens of every step of a
real generation are identical and the logits agree within float32 rounding (both sides use the same
fp16/bf16-rounded weights). Key and shape checks for each format, refusals that write nothing, the CLI's
exit code, and an offline export for the zoo target (training --kind eagle1|medusa1: test_heads.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmspec
from mmspec.drafters.eagle import EagleDrafter
from mmspec.drafters.medusa import MedusaDrafter
from mmspec.heads import load_heads, save_heads, target_info
from mmspec.heads.engine_kinds import Eagle1Layer, Medusa1Heads
from mmspec.heads.export import export

H, HEADS, FFN = 36, 2, 88  # no size divisible by 16: the drafter keeps float32 maps on a CPU (no int8 copies)
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def targets(tmp_path_factory, tokenizer):
    """Tiny random Llama and Qwen2 targets saved as folders: {arch: path}."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    paths = {}
    for arch, (config, model) in {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}.items():
        torch.manual_seed(3)
        cfg = config(vocab_size=len(tokenizer), hidden_size=H, intermediate_size=72, num_hidden_layers=2,
                     num_attention_heads=HEADS, num_key_value_heads=1, max_position_embeddings=128, eos_token_id=0,
                     bos_token_id=0, pad_token_id=1)
        lm = model(cfg).eval()
        with torch.no_grad():
            lm.get_output_embeddings().weight.mul_(8.0)  # sharp: greedy text with structure
        path = tmp_path_factory.mktemp(arch) / "target"
        lm.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[arch] = str(path)
    return paths


def target_of(path):
    from mmspec.text import TextTarget

    return TextTarget.from_pretrained(path, device="cpu", dtype="float32")


def saved_heads(module, folder: Path, target, path, dtype=torch.float16, **extra) -> Path:
    """``module`` rounded to ``dtype`` (the export's), saved as heads of ``target``."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).float())
    return save_heads(module, folder, target_info(target, path), extra)


def load_export(out: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return json.loads((out / "config.json").read_text()), {k: v.float() for k, v in load_file(str(out / "model.safetensors")).items()}


# -- the engines' forwards, from their model code ------------------------------------------------------

def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, positions, theta):
    """Neox-style rotary embedding (vLLM's ``get_rope`` for Llama): x ``[T, heads, d]``."""
    d = x.shape[-1]
    freqs = positions[:, None].double() * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [T, d/2]
    cos, sin = torch.cat([freqs, freqs], -1).cos().float()[:, None], torch.cat([freqs, freqs], -1).sin().float()[:, None]
    return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * sin


def engine_eagle(cfg, w, embeds, hidden, positions):
    """vLLM/SGLang ``LlamaModel.forward`` of an EAGLE-1 draft: ``embeds, hidden [T, H]`` -> ``[T, H]``."""
    x = F.linear(torch.cat([embeds, hidden], -1), w["fc.weight"], w.get("fc.bias"))  # embedding first
    T, n, d = x.shape[0], cfg["num_attention_heads"], cfg["head_dim"]
    p = "layers.0."
    q, k, v = (F.linear(x, w[f"{p}self_attn.{m}_proj.weight"]).view(T, -1, d) for m in "qkv")  # no input norm
    q, k = rope(q, positions, cfg["rope_theta"]), rope(k, positions, cfg["rope_theta"])
    k, v = k.repeat_interleave(n // k.shape[1], 1), v.repeat_interleave(n // v.shape[1], 1)
    att = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
    residual = x + F.linear(att.transpose(0, 1).reshape(T, -1), w[f"{p}self_attn.o_proj.weight"])
    h = rms(residual, w[f"{p}post_attention_layernorm.weight"], cfg["rms_norm_eps"])
    mlp = F.linear(F.silu(F.linear(h, w[f"{p}mlp.gate_proj.weight"])) * F.linear(h, w[f"{p}mlp.up_proj.weight"]),
                   w[f"{p}mlp.down_proj.weight"])
    return residual + mlp  # hidden + residual, no final norm


def engine_eagle_chain(cfg, w, model, ids, start, k, hot=None):
    """An engine's greedy EAGLE chain of ``k`` tokens after ``ids [n]``, its context the pairs from ``start``
    (mmspec's: the last prompt token): pair t = (target state t, token t + 1) at position t. ``hot``: SGLang's
    token map (the shared head's rows at those ids; a draft index i is token hot[i])."""
    with torch.no_grad():
        hidden = model(ids[None], output_hidden_states=True).hidden_states[-1][0]  # [n, H] after the final norm
        embed, head = model.get_input_embeddings(), model.get_output_embeddings().weight
        head = head if hot is None else head[hot]  # [V or len(hot), H]
        feats, tokens, positions = hidden[start:-1], ids[start + 1:], torch.arange(start, len(ids) - 1)
        drafted, logits = [], []
        for _ in range(k):
            out = engine_eagle(cfg, w, embed(tokens), feats, positions)[-1]  # [H]
            logits.append(F.linear(out, head))
            drafted.append(int(logits[-1].argmax()) if hot is None else int(hot[logits[-1].argmax()]))
            feats, tokens = torch.cat([feats, out[None]]), torch.cat([tokens, torch.tensor(drafted[-1:])])
            positions = torch.arange(start, start + len(tokens))
    return drafted, torch.stack(logits)


def engine_medusa(w, hidden, num_heads):
    """vLLM ``Medusa.forward`` + ``compute_logits``: ``hidden [H]`` -> logits ``[M, V]``."""
    outs = []
    for i in range(num_heads):
        x = hidden + F.silu(F.linear(hidden, w[f"blocks.{i}.layers.0.weight"], w[f"blocks.{i}.layers.0.bias"]))
        outs.append(F.linear(x, w[f"lm_heads.{i}.weight"]))
    return torch.stack(outs)


# -- mmspec's drafters, recording what they drafted ----------------------------------------------------

class Recording:
    """A drafter that keeps (target.pos, drafted tokens) of every proposal (batch 1)."""

    def propose(self, last, k):
        draft = super().propose(last, k)
        self.record.append((int(self.target.pos[0]), draft.tokens[0, :, 0].tolist()))
        return draft


class RecordingEagle(Recording, EagleDrafter):
    record: list


class RecordingMedusa(Recording, MedusaDrafter):
    record: list


def committed_ids(target, gen):
    return torch.cat([target.prompt_ids[0], gen.tokens[0, : int(gen.lengths[0]), 0]])


def assert_same_chains(target, drafter, cfg, w, hot=None):
    """Generate with ``drafter`` (recording), and check every chain it drafted against the engine's; returns
    the committed ids."""
    drafter.record = []
    gen = mmspec.generate(target, drafter, PROMPT, max_new_tokens=16, k=3)
    assert not any("Int8" in type(m).__name__ for m in [*drafter.net.modules(), *drafter.head.modules()])  # float32
    ids, start = committed_ids(target, gen), target.prompt_ids.shape[1] - 1
    assert len(drafter.record) >= 4
    for pos, tokens in drafter.record:
        engine_tokens, _ = engine_eagle_chain(cfg, w, target.model, ids[: pos + 1], start, len(tokens), hot)
        assert engine_tokens == tokens  # greedy draft tokens identical
    return ids


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fmt,dtype", [("vllm", "float16"), ("sglang", "bfloat16")])
def test_eagle_export_drafts_as_mmspec_drafts(targets, tmp_path, arch, fmt, dtype):
    target = target_of(targets[arch])
    torch.manual_seed(5)
    layer = Eagle1Layer(H, H, HEADS, FFN, window=64)
    heads = saved_heads(layer, tmp_path / "heads", target, targets[arch], getattr(torch, dtype))
    cfg, w = load_export(export(heads, fmt, tmp_path / "out", dtype))
    assert (w["fc.bias"] == 0).all() if fmt == "sglang" else "fc.bias" not in w
    drafter = RecordingEagle(load_heads(heads, target).layer)  # the loaded layer, recording its proposals
    ids = assert_same_chains(target, drafter, cfg, w)
    # logits: the drafter's layer on the same pairs (its project / qkv / attend path), through the target's head
    with torch.no_grad():
        hidden = target.model(ids[None], output_hidden_states=True).hidden_states[-1]  # [1, n, H]
        embeds = target.model.get_input_embeddings()(ids[None, 1:])
        ours = target.model.get_output_embeddings()(drafter.layer(hidden[:, :-1], embeds))[0]  # [n - 1, V]
        theirs = target.model.get_output_embeddings()(engine_eagle(cfg, w, embeds[0], hidden[0, :-1],
                                                                   torch.arange(len(ids) - 1)))
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)  # float32 on both sides, the same rounded weights
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_sglang_token_map_drafts_as_the_draft_vocabulary(targets, tmp_path):
    target = target_of(targets["llama"])
    torch.manual_seed(7)
    vocab = list(range(2, target.vocab_size, 3))
    heads = saved_heads(Eagle1Layer(H, H, HEADS, FFN, window=64), tmp_path / "heads", target, targets["llama"],
                        draft_vocab=vocab)
    out = export(heads, "sglang", tmp_path / "out")
    hot = torch.load(out / "hot_token_map.pt", weights_only=True)
    assert hot.tolist() == vocab and f"--speculative-token-map {(out / 'hot_token_map.pt').resolve()}" in \
        (out / "README.md").read_text()
    cfg, w = load_export(out)
    loaded = load_heads(heads, target)
    drafter = RecordingEagle(loaded.layer, vocab=loaded.vocab)
    assert_same_chains(target, drafter, cfg, w, hot)
    assert all(t in vocab for _, tokens in drafter.record for t in tokens)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_medusa_export_drafts_as_mmspec_drafts(targets, tmp_path, arch):
    target = target_of(targets[arch])
    torch.manual_seed(6)
    heads = saved_heads(Medusa1Heads(H, 3, zero_init=False), tmp_path / "heads", target, targets[arch])
    cfg, w = load_export(export(heads, "medusa", tmp_path / "out"))
    assert cfg["model_type"] == "medusa" and cfg["num_heads"] == 3 and cfg["medusa_fc_bias"] is True
    drafter = RecordingMedusa(load_heads(heads, target).heads)
    drafter.record = []
    gen = mmspec.generate(target, drafter, PROMPT, max_new_tokens=16, k=3)
    ids = committed_ids(target, gen)
    head = target.model.get_output_embeddings().weight.detach().half().float()  # the target's head, as exported
    assert all(torch.equal(w[f"lm_heads.{i}.weight"], head) for i in range(3))
    with torch.no_grad():
        hidden = target.model(ids[None], output_hidden_states=True).hidden_states[-1][0]  # [n, H]
        for pos, tokens in drafter.record:
            logits = engine_medusa(w, hidden[pos - 1], 3)  # the state whose head gave the newest token
            assert logits.argmax(-1).tolist()[: len(tokens)] == tokens
            ours = F.linear(drafter.heads(hidden[pos - 1]), head)  # [M, V]
            assert torch.allclose(ours, logits, atol=1e-4, rtol=1e-4)
    assert len(drafter.record) >= 4


VLLM_KEYS = {"fc.weight": (H, 2 * H), **{f"layers.0.self_attn.{m}_proj.weight": (H, H) for m in "qkvo"},
             "layers.0.mlp.gate_proj.weight": (FFN, H), "layers.0.mlp.up_proj.weight": (FFN, H),
             "layers.0.mlp.down_proj.weight": (H, FFN), "layers.0.post_attention_layernorm.weight": (H,)}


def test_keys_shapes_and_configs_of_each_format(targets, tmp_path):
    target = target_of(targets["llama"])
    eagle1 = saved_heads(Eagle1Layer(H, H, HEADS, FFN, window=64), tmp_path / "e1", target, targets["llama"])
    medusa1 = saved_heads(Medusa1Heads(H, 2), tmp_path / "m1", target, targets["llama"])
    V = target.vocab_size
    for fmt, heads, keys in [("vllm", eagle1, VLLM_KEYS), ("sglang", eagle1, {**VLLM_KEYS, "fc.bias": (H,)}),
                             ("medusa", medusa1, {**{f"blocks.{i}.layers.0.weight": (H, H) for i in range(2)},
                                                  **{f"blocks.{i}.layers.0.bias": (H,) for i in range(2)},
                                                  **{f"lm_heads.{i}.weight": (V, H) for i in range(2)}})]:
        for dtype in ("float16", "bfloat16"):
            from safetensors.torch import load_file

            out = export(heads, fmt, tmp_path / f"{fmt}-{dtype}", dtype)
            state = load_file(str(out / "model.safetensors"))
            assert {k: tuple(v.shape) for k, v in state.items()} == keys
            assert {v.dtype for v in state.values()} == {getattr(torch, dtype)}
            cfg = json.loads((out / "config.json").read_text())
            assert cfg["torch_dtype"] == dtype and cfg["hidden_size"] == H and cfg["vocab_size"] == V
            card = (out / "README.md").read_text()
            if fmt == "medusa":
                assert '"method": "medusa"' in card
                continue
            assert cfg["num_hidden_layers"] == 1 and cfg["max_position_embeddings"] == 128
            assert cfg["architectures"] == (["LlamaForCausalLMEagle"] if fmt == "sglang" else ["LlamaForCausalLM"])
            assert ("--speculative-algorithm EAGLE --speculative-draft-model-path" in card) == (fmt == "sglang")
            assert (f'speculative_config={{"method": "eagle", "model": "{out.resolve()}"' in card) == (fmt == "vllm")


def test_refusals_name_the_reason_and_write_nothing(targets, tiny_models, tmp_path):
    from mmspec.heads import MedusaHeads, eagle_for

    target = target_of(targets["llama"])
    info = target_info(target, targets["llama"])
    folders = {"eagle": save_heads(eagle_for(H, H, HEADS, 64), tmp_path / "eagle", info),
               "medusa": save_heads(MedusaHeads(H, 2), tmp_path / "medusa", info),
               "eagle1": save_heads(Eagle1Layer(H, H, HEADS, FFN, 64), tmp_path / "eagle1", info),
               "medusa1": save_heads(Medusa1Heads(H, 2), tmp_path / "medusa1", info),
               "vocab": save_heads(Eagle1Layer(H, H, HEADS, FFN, 64), tmp_path / "vocab", info, {"draft_vocab": [2, 3]})}
    refused = [("eagle", "vllm", "input_layernorm.*no bias.*--kind eagle1"), ("eagle", "sglang", "input_layernorm"),
               ("medusa", "medusa", "--kind medusa1"), ("eagle1", "medusa", "kind 'medusa1' only"),
               ("medusa1", "vllm", "kind 'eagle1' only"), ("vocab", "vllm", "reduced vocabulary"),
               *[(kind, "eagle3", "three intermediate hidden states") for kind in folders],
               ("eagle1", "tensorrt", "unknown export format 'tensorrt'; formats: vllm, sglang, eagle3, medusa")]
    for kind, fmt, message in refused:
        with pytest.raises(ValueError, match=message):
            export(folders[kind], fmt, tmp_path / "out")
        assert not (tmp_path / "out").exists()  # never a partial or silent file
    with pytest.raises(ValueError, match="unknown dtype 'float32'"):
        export(folders["eagle1"], "vllm", tmp_path / "out", "float32")
    with pytest.raises(ValueError, match="is the heads folder itself or a file"):
        export(folders["eagle1"], "vllm", folders["eagle1"])
    with pytest.raises(ValueError, match="hidden_size 32, the heads were trained for 36"):
        export(folders["eagle1"], "vllm", tmp_path / "out", target=tiny_models["llama"])  # another target
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes(targets, tmp_path, capsys):
    from mmspec.cli import main

    target = target_of(targets["llama"])
    heads = saved_heads(Eagle1Layer(H, H, HEADS, FFN, 64), tmp_path / "h", target, targets["llama"])
    assert main(["heads", "export", str(heads), "--format", "vllm", "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "model.safetensors").is_file()
    capsys.readouterr()  # drop the model loading's progress bars
    assert main(["heads", "export", str(heads), "--format", "medusa", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmspec heads export: error: cannot export") and "medusa1" in err[0]
    assert main(["heads", "export", str(heads), "--format", "onnx", "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()


def test_zoo_target_exports_offline(tmp_path):
    """The zoo's heads (kind eagle: an input norm) are refused for vLLM with the reason; an eagle1 layer of
    the zoo target's sizes exports offline with exactly the keys and shapes vLLM's llama_eagle.py loads."""
    from safetensors.torch import load_file

    from mmspec.heads.store import read_heads_config

    with pytest.raises(ValueError, match="input_layernorm.*--kind eagle1"):
        export("zoo:code-heads", "vllm", tmp_path / "refused")
    zoo = read_heads_config("zoo:code-heads")
    Hz, Iz = zoo["hidden_size"], zoo["intermediate_size"]
    layer = Eagle1Layer(Hz, Hz, zoo["num_attention_heads"], Iz, zoo["window"])
    save_heads(layer, tmp_path / "heads", {k: zoo[k] for k in ("target", "hidden_size", "vocab_size", "num_codebooks",
                                                               "fingerprint")})
    out = export(tmp_path / "heads", "vllm", tmp_path / "vllm")  # target zoo:code-target: its config, offline
    shapes = {k: tuple(v.shape) for k, v in load_file(str(out / "model.safetensors")).items()}
    assert shapes == {"fc.weight": (Hz, 2 * Hz), **{f"layers.0.self_attn.{m}_proj.weight": (Hz, Hz) for m in "qkvo"},
                      "layers.0.mlp.gate_proj.weight": (Iz, Hz), "layers.0.mlp.up_proj.weight": (Iz, Hz),
                      "layers.0.mlp.down_proj.weight": (Hz, Iz), "layers.0.post_attention_layernorm.weight": (Hz,)}
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["architectures"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["max_position_embeddings"]) == \
        (["LlamaForCausalLM"], 1, 8192, 2048)
