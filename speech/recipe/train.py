"""`train`: the speech zoo's codec, the codes of every utterance, the target LM and the draft LM, in one budget.

Each stage runs on the shared stage loop (``mmspec.training.train_stage``): a share of the run's clock,
the warmup + cosine schedule, atomic resumable checkpoints in ``OUT/checkpoints`` and a progress bar;
this module keeps the data, the models, the losses and the stages' settings.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mmspec.training import Best, Clock, Schedule, Stage, adamw, setup_device, train_stage

from .data import load_data
from .tensors import lm_batch, lm_eval_loss, lm_step_loss, lm_tensors


FULL = dict(codec=dict(n_filters=16, dimension=64, lstm=1, num_codebooks=4, codebook_size=512),
            codec_batch=48, segment=16000, lm_batch=64, eval_every=100,
            target=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                        intermediate_size=768),
            draft=dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=384))
QUICK = dict(codec=dict(n_filters=4, dimension=16, lstm=0, num_codebooks=4, codebook_size=32),
             codec_batch=4, segment=4000, lm_batch=8, max_utterances=48, eval_every=10,
             target=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64),
             draft=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=32))
SHARES = {"codec": 0.45, "target": 0.35, "draft": 0.20}


def mel_losses(sr: int, device) -> list:
    """Multi-resolution log-mel transforms (n_fft 256 / 512 / 1024, hop n_fft / 4)."""
    import torchaudio

    return [torchaudio.transforms.MelSpectrogram(sr, n_fft=n, hop_length=n // 4, n_mels=m).to(device)
            for n, m in ((256, 32), (512, 64), (1024, 64))]


def codec_loss(codec, mels, wav):
    """``wav [B, 1, S]`` -> (total loss, parts): 0.5 * waveform L1 + log-mel L1 (3 scales) + commitment."""
    import torch.nn.functional as F

    m = codec.model
    emb = m.encoder(wav)  # [B, D, T]
    q = m.quantizer(emb, m.frame_rate, m.bandwidth)  # straight-through quantized [B, D, T]
    rec = m.decoder(q.quantized)[..., : wav.shape[-1]]  # [B, 1, S]
    l1 = F.l1_loss(rec, wav)
    mel = sum(F.l1_loss(torch.log(t(rec) + 1e-5), torch.log(t(wav) + 1e-5)) for t in mels) / len(mels)
    commit = q.penalty
    return 0.5 * l1 + mel + commit, {"l1": l1.detach(), "mel": mel.detach(), "commit": commit.detach()}


def train_codec(args, cfg, train_wavs, device, deadline, ckpt_dir: Path):
    """Stage 1: fit the ZooCodec on random segments of the training audio (fp32; TF32 on CUDA)."""
    from ..codec import ZooCodec

    torch.manual_seed(args.seed)
    codec = ZooCodec(**cfg["codec"]).to(device).train()
    audio = torch.from_numpy(np.concatenate(train_wavs)).to(device)  # [N] all training audio
    seg, B, mels, last = cfg["segment"], cfg["codec_batch"], mel_losses(codec.sample_rate, device), {}

    def start(step: int):
        gen = torch.Generator(device="cpu").manual_seed(args.seed + step)

        def step_fn(step: int, progress: float):
            offs = torch.randint(0, len(audio) - seg, (B,), generator=gen).to(device)
            wav = audio[offs[:, None] + torch.arange(seg, device=device)].unsqueeze(1)  # [B, 1, S]
            return codec_loss(codec, mels, wav)
        return step_fn

    def watch(state: dict, loss, parts: dict, progress: float, clock) -> dict | None:
        last.update(parts)
        if state["step"] % 25 == 0:  # (the only host syncs besides encodec's dead-code check)
            return {k: f"{v.item():.3f}" for k, v in parts.items()}
        return None

    opt = adamw(codec.parameters(), 1e-3, betas=(0.8, 0.99), weight_decay=0.01)
    state = train_stage(Stage("codec", codec, opt, start, Schedule(1e-3, warmup_steps=50), deadline - time.time(),
                              checkpoint=ckpt_dir / "codec.ckpt", watch=watch))
    print(f"codec: {state['step']} steps" + "".join(f", {k} {v.item():.4f}" for k, v in last.items()))
    return codec.eval(), state["step"]


@torch.no_grad()
def encode_all(codec, wavs, device, batch: int = 32) -> list[np.ndarray]:
    """Stage 2: codes ``[K, T]`` (int16) for every utterance; T = ceil(len / hop)."""
    order = np.argsort([len(w) for w in wavs])
    codes: list = [None] * len(wavs)
    for i in range(0, len(order), batch):
        idx = order[i: i + batch]
        S = max(len(wavs[j]) for j in idx)
        x = torch.zeros(len(idx), 1, S)
        for r, j in enumerate(idx):
            x[r, 0, : len(wavs[j])] = torch.from_numpy(wavs[j])
        c = codec.encode(x.to(device)).cpu().numpy().astype(np.int16)  # [b, K, T]; causal: padding is harmless
        for r, j in enumerate(idx):
            codes[j] = c[r, :, : math.ceil(len(wavs[j]) / codec.hop_length)]
    return codes


def train_lm(name, model, data, train_idx, valid_idx, device, deadline, ckpt_dir: Path, batch: int, lr: float,
             seed: int, teacher=None, distill_after: float = 0.4, eval_every: int = 100, ckpt_every: float = 60.0):
    """Stage 3 / 4: AdamW, bf16 autocast on CUDA, time-based cosine schedule, resumable.

    With a ``teacher``, the last ``1 - distill_after`` of the stage's time also distils its logits.
    Held-out cross-entropy is measured every ``eval_every`` steps; the best weights are returned
    (the data set is small, so late steps can overfit). A checkpoint in ``ckpt_dir`` (written every
    ``ckpt_every`` s) is resumed from. Returns (model, steps, best valid CE).
    """
    best, final = Best(device="cpu"), {}

    def start(step: int):
        rng = np.random.default_rng(seed + step)

        def step_fn(step: int, progress: float):
            idx = rng.choice(train_idx, size=min(batch, len(train_idx)), replace=False)
            use_teacher = teacher if progress >= distill_after else None
            loss, ce = lm_step_loss(model, lm_batch(data, idx, device), device, use_teacher)
            return loss, (ce, use_teacher is not None)
        return step_fn

    def watch(state: dict, loss, aux, progress: float, clock) -> dict | None:
        if state["step"] % eval_every or not len(valid_idx):
            return None
        v = lm_eval_loss(model, data, valid_idx, device)  # held-out loss: keep the best weights (on the CPU)
        best.offer(v, model)
        model.train()
        return {"ce": f"{aux[0].item():.3f}", "valid": f"{v:.3f}", "distill": aux[1]}

    def finish(state: dict, clock) -> None:  # final held-out loss; the best weights come back if earlier ones were
        final["ce"] = lm_eval_loss(model, data, valid_idx, device) if len(valid_idx) else float("inf")
        best.offer(final["ce"], model)

    state = train_stage(Stage(name, model, adamw(model.parameters(), lr, betas=(0.9, 0.95), weight_decay=0.1),
                              start, Schedule(lr, warmup_steps=100), deadline - time.time(),
                              checkpoint=ckpt_dir / f"{name}.ckpt", watch=watch, finish=finish, best=best,
                              every=ckpt_every))
    print(f"{name}: {state['step']} steps, valid CE final {final.get('ce', math.inf):.4f}, best {best.value:.4f}")
    return model.eval(), state["step"], best.value


def speech_meta(codec, lm_cfg, index: dict, role: str, codec_path: str) -> dict:
    """The ``mmspec_speech.json`` the speech adapter reads next to ``lm/``."""
    from ..lm import TEXT_BOS, TEXT_EOS, TEXT_PAD, VOICE_BASE

    return {"role": role, "codec": codec_path, "lm": "lm", "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate, "hop_length": codec.hop_length,
            "num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size,
            "audio_vocab_size": lm_cfg.audio_vocab_size, "pad_id": lm_cfg.pad_id, "eos_id": lm_cfg.eos_id,
            "delay_pattern": "codebook k shifted right by k steps (MusicGen); EOS on codebook 0 ends speech",
            "text": {"encoding": "ASCII bytes 0-127", "pad_id": TEXT_PAD, "bos_id": TEXT_BOS,
                     "eos_id": TEXT_EOS, "voice_base": VOICE_BASE,
                     "layout": "[bos, voice_base + voice, bytes..., eos] then audio frames"},
            "voices": [v["name"] for v in index["voices"]],
            "voice_settings": index["voices"], "max_frames": int(4.0 * codec.frame_rate) + 10}


def save_lm(model, folder: Path) -> None:
    """fp16 safetensors via ``save_pretrained``; the in-memory model keeps its dtype."""
    dtype = next(model.parameters()).dtype
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    model.to(dtype)


def train(args) -> None:
    """Codec -> codes -> target LM -> draft LM within ``--time-budget`` seconds (resumable)."""
    from ..codec import ZooCodec

    # 1. Set-up: budget (from now: data loading counts), device, sizes, data, checkpoint folder.
    clock = Clock(args.time_budget, reserve=min(20.0, 0.05 * args.time_budget), shares=SHARES)
    device, cfg = setup_device(args.device), (QUICK if args.quick else FULL)
    index, wavs = load_data(args.data)
    items = index["utterances"][: cfg.get("max_utterances")]
    wavs = wavs[: len(items)]
    train_idx = np.array([i for i, u in enumerate(items) if u["split"] == "train"])
    valid_idx = np.array([i for i, u in enumerate(items) if u["split"] == "valid"])
    out = Path(args.out)
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    tgt_dir = out / "speech"
    summary = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "time_budget_s": args.time_budget, "quick": args.quick, "utterances": len(items),
               "train_utterances": len(train_idx), "valid_utterances": len(valid_idx)}
    print(f"{summary['device']}: {len(train_idx)} train / {len(valid_idx)} valid utterances")
    # 2. Stage 1: codec (skipped when already saved), saved fp16 and reloaded so codes match the shipped one.
    if not (tgt_dir / "codec" / "config.json").exists():
        codec, steps = train_codec(args, cfg, [wavs[i] for i in train_idx], device,
                                   clock.deadline("codec", ["codec", "target", "draft"]), ckpt)
        codec.save_pretrained(tgt_dir / "codec")
        summary["codec_steps"] = steps
    summary["codec_done_s"] = round(clock.elapsed(), 1)
    codec = ZooCodec.from_pretrained(tgt_dir / "codec", device=device)
    # 3. Stage 2: codes for every utterance.
    codes_path = ckpt / "codes.npz"
    if codes_path.exists():
        codes = list(np.load(codes_path).values())
    else:
        codes = encode_all(codec, wavs, device)
        np.savez(codes_path, *codes)
    C = codec.codebook_size
    lm_data = lm_tensors(items, codes, codec.num_codebooks, C, C + 1)
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in lm_data.items()}
    summary["codes_done_s"] = round(clock.elapsed(), 1)
    # 4. Stage 3: target LM; 5. stage 4: draft LM (distilled from the target in its last 60%).
    _train_lms(args, cfg, clock, device, codec, index, data, train_idx, valid_idx, summary)
    # 6. Summary; drop the (large, fp32 + optimizer) checkpoints unless asked to keep them.
    summary["codec_params"] = sum(p.numel() for p in codec.parameters())
    summary["total_s"] = round(clock.elapsed(), 1)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if not args.keep_checkpoints:
        shutil.rmtree(ckpt, ignore_errors=True)
    print(json.dumps(summary, indent=2))


def _train_lms(args, cfg, clock: Clock, device, codec, index: dict, data: dict, train_idx, valid_idx,
               summary: dict) -> None:
    """The target LM, then the draft LM (distilled from the target); each folder gets its ``mmspec_speech.json``.

    A folder whose ``lm/`` is already saved is loaded instead of trained (a resumed run).
    """
    from ..lm import SpeechLM, SpeechLMConfig

    out = Path(args.out)
    base = dict(num_codebooks=codec.num_codebooks, codebook_size=codec.codebook_size, num_voices=len(index["voices"]))
    models = {}
    for role, folder, todo in (("target", out / "speech", ["target", "draft"]),
                               ("draft", out / "speech-draft", ["draft"])):
        lm_cfg = SpeechLMConfig(**base, **cfg[role])
        if (folder / "lm" / "config.json").exists():
            model = SpeechLM.from_pretrained(folder / "lm", dtype=torch.float32).to(device).eval()
        else:
            torch.manual_seed(args.seed + len(role))
            model = SpeechLM(lm_cfg).to(device)
            lr = 2e-3 if role == "draft" else 1e-3
            model, steps, _ = train_lm(role, model, data, train_idx, valid_idx, device,
                                       clock.deadline(role, todo), out / "checkpoints", cfg["lm_batch"], lr,
                                       args.seed, teacher=models.get("target"), eval_every=cfg["eval_every"])
            save_lm(model, folder / "lm")
            summary[f"{role}_steps"] = steps
        models[role] = model
        summary[f"{role}_params"] = sum(p.numel() for p in model.parameters())
        summary[f"{role}_valid_ce"] = round(lm_eval_loss(model, data, valid_idx, device), 4)
        summary[f"{role}_done_s"] = round(clock.elapsed(), 1)
        codec_path = "codec" if role == "target" else "../speech/codec"
        meta = speech_meta(codec, lm_cfg, index, role, codec_path)
        (folder / "mmspec_speech.json").write_text(json.dumps(meta, indent=2))
