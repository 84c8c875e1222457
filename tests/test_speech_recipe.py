"""Speech zoo pieces: ZooCodec, delay pattern, parallel-head codec LM, and the recipe's quick smoke run."""
import json
import math

import numpy as np
import pytest
import torch

from mmspec.speech import recipe
from mmspec.speech.codec import ZooCodec
from mmspec.speech.lm import TEXT_PAD, SpeechLM, SpeechLMConfig, apply_delay, encode_text, revert_delay

TINY_CODEC = dict(n_filters=4, dimension=8, lstm=0, num_codebooks=3, codebook_size=16)
TINY_LM = dict(num_codebooks=3, codebook_size=16, num_voices=2, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)


def _trained_once(codec: ZooCodec) -> ZooCodec:
    """One training-mode pass initialises the RVQ codebooks (k-means on the batch)."""
    torch.manual_seed(0)
    m = codec.model.train()
    m.quantizer(m.encoder(torch.randn(2, 1, 3200) * 0.1), m.frame_rate, m.bandwidth)
    return codec.eval()


def test_codec_shapes_and_rates():
    codec = _trained_once(ZooCodec(**TINY_CODEC))
    assert codec.sample_rate == 16000 and codec.hop_length == 320 and codec.frame_rate == 50.0
    wav = torch.randn(2, 1, 16000 + 100) * 0.1  # [B, 1, S], not a multiple of the hop
    codes = codec.encode(wav)
    assert codes.shape == (2, 3, math.ceil(wav.shape[-1] / 320))  # [B, K, T]
    assert codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 16
    assert len(codes.unique()) > 1  # the k-means-initialised codebooks are used
    out = codec.decode(codes)
    assert out.shape == (2, 1, codes.shape[-1] * 320)  # [B, 1, T * hop]


def test_codec_save_load_round_trip(tmp_path):
    codec = _trained_once(ZooCodec(**TINY_CODEC))
    codec.save_pretrained(tmp_path, dtype=torch.float32)
    again = ZooCodec.from_pretrained(tmp_path)
    wav = torch.randn(1, 1, 4800) * 0.1
    assert torch.equal(codec.encode(wav), again.encode(wav))
    assert torch.allclose(codec.decode(codec.encode(wav)), again.decode(again.encode(wav)))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_codebooks"] == 3 and cfg["frame_rate"] == 50.0


def test_delay_round_trip_and_layout():
    codes = torch.randint(0, 16, (2, 4, 7))  # [B, K, T]
    delayed = apply_delay(codes, pad_id=16)
    assert delayed.shape == (2, 4, 7 + 3)
    for k in range(4):
        assert (delayed[:, k, :k] == 16).all() and (delayed[:, k, k + 7:] == 16).all()
        assert torch.equal(delayed[:, k, k: k + 7], codes[:, k])
    assert torch.equal(revert_delay(delayed), codes)


def _lm():
    torch.manual_seed(0)
    return SpeechLM(SpeechLMConfig(**TINY_LM)).eval()


def test_lm_logits_shape_and_save_load(tmp_path):
    model = _lm()
    text = torch.tensor([encode_text("Hello there.", voice=1)])  # [1, L]
    frames = torch.randint(0, 18, (1, 5, 3))  # [B, T, K] (codes + pad + eos)
    logits = model(text_ids=text, audio_frames=frames).logits
    assert logits.shape == (1, text.shape[1] + 5, 3, 18)  # [B, N, K, V]
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = SpeechLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert torch.allclose(again(text_ids=text, audio_frames=frames).logits, logits, atol=1e-6)


def test_cached_incremental_forward_matches_full_with_left_padding():
    model = _lm()
    # 1. Two rows with different text lengths: the shorter one is left-padded.
    a, b = encode_text("Hi.", 0), encode_text("A longer one.", 1)
    L = len(b)
    text = torch.tensor([[TEXT_PAD] * (L - len(a)) + a, b])  # [2, L]
    tmask = (text != TEXT_PAD).long()
    frames = torch.randint(0, 18, (2, 6, 3))  # [B, T, K]
    mask = torch.cat([tmask, torch.ones(2, 6, dtype=torch.long)], dim=1)
    full = model(text_ids=text, audio_frames=frames, attention_mask=mask).logits[:, L:]  # [B, 6, K, V]
    # 2. Prefill with the first frame, then one frame at a time from the cache.
    out = model(text_ids=text, audio_frames=frames[:, :1], attention_mask=mask[:, : L + 1], use_cache=True)
    steps, cache = [out.logits[:, -1]], out.past_key_values
    for t in range(1, 6):
        out = model(audio_frames=frames[:, t: t + 1], attention_mask=mask[:, : L + t + 1],
                    past_key_values=cache, use_cache=True)
        steps.append(out.logits[:, -1])
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
    # 3. Roll back 2 frames (negative crop = tokens to remove, portable across transformers 5.x) and redo.
    cache.crop(-2)
    redo = model(audio_frames=frames[:, 4:6], attention_mask=mask, past_key_values=cache, use_cache=True).logits
    assert torch.allclose(redo, full[:, 4:6], atol=1e-5)
    # 4. The padded row equals the same row run alone.
    alone = model(text_ids=torch.tensor([a]), audio_frames=frames[:1]).logits[:, len(a):]
    assert torch.allclose(alone, full[:1], atol=1e-5)


def test_lm_tensors_targets_follow_delay():
    items = [{"text": "Ab.", "voice": 0}, {"text": "Longer.", "voice": 1}]
    codes = [np.arange(6).reshape(3, 2).astype(np.int16), np.zeros((3, 4), np.int16)]
    d = recipe.lm_tensors(items, codes, K=3, pad_id=16, eos_id=17)
    assert d["inp"].shape[2] == 3 and list(d["alen"]) == [2 + 3, 4 + 3]
    tgt0 = d["tgt"][0, :5].T  # [K, T + K] for the first row
    expected = apply_delay(torch.cat([torch.from_numpy(codes[0]).long(), torch.full((3, 1), 17)], 1)[None], 16)[0]
    assert torch.equal(tgt0, expected)
    assert (d["tgt"][0, 5:] == -100).all()  # past the end: ignored
    assert torch.equal(d["inp"][0, 1:5], d["tgt"][0, :4]) and (d["inp"][0, 0] == 16).all()  # BOS frame
    assert (d["text"][0, : d["text"].shape[1] - d["tlen"][0]] == TEXT_PAD).all()  # left padding


def test_steps_tensors_of_a_truncated_row_keep_only_what_was_emitted():
    items = [{"text": "Ab.", "voice": 0}, {"text": "Cd.", "voice": 1}]
    full = apply_delay(torch.cat([torch.arange(6).view(3, 2), torch.full((3, 1), 17)], 1)[None], 16)[0].T  # [5, 3]
    d = recipe.steps_tensors(items, [full.numpy(), full[:3].numpy()], K=3, pad_id=16)
    ref = recipe.lm_tensors(items[:1], [np.arange(6).reshape(3, 2).astype(np.int16)], K=3, pad_id=16, eos_id=17)
    assert torch.equal(d["tgt"][0], ref["tgt"][0]) and torch.equal(d["inp"][0], ref["inp"][0])  # same as from codes
    assert torch.equal(d["tgt"][1, :3], full[:3]) and (d["tgt"][1, 3:] == -100).all()  # no invented EOS
    assert list(d["alen"]) == [5, 3]


def test_mulaw_round_trip():
    x = np.linspace(-1, 1, 1001).astype(np.float32)
    y = recipe.mulaw_decode(recipe.mulaw_encode(x))
    assert np.abs(y - x).max() < 0.025 and np.abs(y - x)[450:551].max() < 3e-3 and recipe.si_snr(y, x) > 30


def _sine_data(path, n=24):
    """A tiny synthetic data set (sines of varying pitch, 1-1.5 s) in the recipe's on-disk format."""
    rng = np.random.default_rng(0)
    mulaw, texts, voices = [], [], []
    for i in range(n):
        t = np.arange(int(16000 * rng.uniform(1.0, 1.5))) / 16000
        mulaw.append(recipe.mulaw_encode(0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t)))
        texts.append(f"Tone number {i}.")
        voices.append(i % 2)
    recipe.write_data(path, mulaw, texts, voices, [{"name": "a"}, {"name": "b"}], "sines")


@pytest.mark.slow
def test_train_quick_and_evaluate_smoke(tmp_path):
    data, zoo = tmp_path / "data", tmp_path / "zoo"
    _sine_data(data)
    recipe.main(["train", "--quick", "--data", str(data), "--out", str(zoo), "--device", "cpu",
                 "--time-budget", "12"])
    # 1. The standard folders, fp16 safetensors, and the adapter's metadata.
    from safetensors import safe_open

    with safe_open(str(zoo / "speech" / "lm" / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    meta = json.loads((zoo / "speech-draft" / "mmspec_speech.json").read_text())
    assert meta["role"] == "draft" and meta["codec"] == "../speech/codec" and meta["pad_id"] == meta["codebook_size"]
    assert not (zoo / "checkpoints").exists()
    target = SpeechLM.from_pretrained(zoo / "speech" / "lm", dtype=torch.float32)
    assert target.config.num_codebooks == meta["num_codebooks"]
    # 2. Evaluate writes a WAV and both model cards.
    recipe.main(["evaluate", "--data", str(data), "--zoo", str(zoo), "--max-valid", "2", "--samples", "1"])
    assert (zoo / "speech" / "samples" / "sample0.wav").exists()
    assert "draft" in (zoo / "speech-draft" / "README.md").read_text()
    # 3. Distil a fresh draft on the target's own greedy output (no audio needed) and pair it.
    out = tmp_path / "distilled"
    recipe.main(["distill", "--zoo", str(zoo), "--out", str(out), "--init", "", "--hidden", "16", "--heads", "2",
                 "--max-texts", "44", "--gen-batch", "8", "--minutes", "0.05", "--eval-every", "5", "--device", "cpu"])
    summary = json.loads((out / "speech-draft" / "distill_summary.json").read_text())
    assert summary["texts"] == 44 and summary["valid_utterances"] == 2 and summary["steps"] > 0
    from mmspec.speech.target import SpeechTarget

    target = SpeechTarget.from_pretrained(str(zoo / "speech"), load_codec=False)
    target.check_draft(SpeechTarget.from_pretrained(str(out / "speech-draft"), load_codec=False))
    assert not (out / "checkpoints").exists()  # no resumable state or generated steps left behind


def test_train_lm_resumes_from_checkpoint(tmp_path):
    import time

    items = [{"text": f"Row {i}.", "voice": i % 2} for i in range(6)]
    codes = [np.random.default_rng(i).integers(0, 16, (3, 5)).astype(np.int16) for i in range(6)]
    data = recipe.lm_tensors(items, codes, K=3, pad_id=16, eos_id=17)
    dev, rows = torch.device("cpu"), np.arange(6)
    run = lambda: recipe.train_lm("t", _lm().train(), data, rows[:4], rows[4:], dev, time.time() + 1.0, tmp_path,
                                  batch=2, lr=1e-3, seed=0, eval_every=2, ckpt_every=0.0)
    _, steps1, _ = run()
    assert steps1 > 0 and (tmp_path / "t.ckpt").exists()
    _, steps2, _ = run()  # continues the step count of the first run
    assert steps2 > steps1


def test_grown_layers_start_as_the_identity():
    cfg = SpeechLMConfig(num_codebooks=2, codebook_size=16, num_voices=2, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    small = SpeechLM(cfg).eval()
    grown = recipe.grow_layers(small, 3).eval()
    assert grown.config.num_hidden_layers == 3 and len(grown.backbone.layers) == 3
    text, frames = torch.tensor([[129, 131, 65, 130]]), torch.randint(0, 16, (1, 5, 2))
    with torch.no_grad():
        assert torch.allclose(small(text_ids=text, audio_frames=frames).logits,
                              grown(text_ids=text, audio_frames=frames).logits, atol=1e-5)
    with pytest.raises(ValueError, match="fewer"):
        recipe.grow_layers(grown, 2)


def test_distill_refuses_a_text_count_without_held_out_transcripts(tmp_path):
    with pytest.raises(ValueError, match="max-texts 5"):
        recipe.main(["distill", "--out", str(tmp_path), "--max-texts", "5", "--device", "cpu"])
