"""Offline speech zoo recipe: espeak-ng data -> small EnCodec -> codec LMs (target + draft).

Subcommands (``python -m mmspec.speech.recipe <cmd> --help``):

* ``prepare``  (CPU, needs ``espeak-ng``): synthesize short English utterances from first sentences of
  Python stdlib docstrings with a few espeak voices, 16 kHz, stored as 8-bit mu-law in a compressed
  ``audio.mulaw.xz`` + ``index.json`` (transcripts, voices, 5% validation split) under ``--data``.
* ``train``    (GPU or CPU): 1. codec (waveform L1 + multi-resolution mel L1 + commitment),
  2. encode every utterance to codes, 3. target LM, 4. draft LM (+ distillation on target logits when
  time remains). ``--time-budget`` caps the whole run; checkpoints make it resumable.
* ``evaluate`` (CPU): codec mel distance and SI-SNR, LM validation losses, 3 sampled utterances
  written as WAVs, model cards.
"""
from __future__ import annotations

import argparse
import ast
import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import wave
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
AUDIO_NAME = "audio.mulaw.xz"
DEFAULT_DATA = Path(__file__).resolve().parent.parent / ".gpu" / "speech"
DEFAULT_OUT = Path(__file__).resolve().parent / "zoo"
# Each voice: espeak-ng voice (+variant), speed (words/min), pitch (0-99). The LM is conditioned on it.
VOICES = [
    {"name": "us_male", "espeak": "en-us", "speed": 180, "pitch": 45},
    {"name": "gb_male", "espeak": "en-gb", "speed": 170, "pitch": 40},
    {"name": "us_female", "espeak": "en-us+f3", "speed": 185, "pitch": 60},
    {"name": "gb_female", "espeak": "en-gb+f4", "speed": 175, "pitch": 55},
]
_SENTENCE = re.compile(r"^[A-Z][A-Za-z ,']+[.?!]$")


# ----------------------------------------------------------------------------------------- data
def mulaw_encode(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """float [-1, 1] -> uint8 mu-law (8 bits: about 38 dB SNR, half the size of int16)."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.round((y + 1) / 2 * mu).astype(np.uint8)


def mulaw_decode(q: np.ndarray, mu: int = 255) -> np.ndarray:
    """uint8 mu-law -> float32 [-1, 1]."""
    y = q.astype(np.float32) / mu * 2 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def stdlib_sentences() -> list[str]:
    """Clean ASCII first-class sentences (3-10 words) from docstrings of this Python's stdlib, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                tree = ast.parse(Path(dirpath, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for s in re.split(r"(?<=[.?!])\s+", " ".join((ast.get_docstring(node) or "").split())):
                    if 3 <= len(s.split()) <= 10 and 12 <= len(s) <= 64 and _SENTENCE.match(s):
                        found.add(s)
    return sorted(found)


def synthesize(text: str, voice: dict) -> np.ndarray:
    """espeak-ng -> float32 mono at 16 kHz, leading/trailing silence trimmed to 50 ms."""
    import torchaudio.functional as AF

    cmd = ["espeak-ng", "-v", voice["espeak"], "-s", str(voice["speed"]), "-p", str(voice["pitch"]),
           "--stdout", text]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    with wave.open(__import__("io").BytesIO(raw)) as w:
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    loud = np.flatnonzero(np.abs(x) > 0.01)
    if len(loud) == 0:
        return x[:0]
    pad = SAMPLE_RATE // 20
    return x[max(0, loud[0] - pad): loud[-1] + pad]


def split_of(text: str) -> str:
    """"valid" for about 5% of transcripts (crc32 % 20 == 0), else "train"."""
    return "valid" if zlib.crc32(text.encode()) % 20 == 0 else "train"


def prepare(args) -> None:
    """Synthesize the utterances; write ``audio.mulaw.xz`` (lzma'd uint8 mu-law) + ``index.json``."""
    # 1. Check the synthesizer.
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is missing: run `apt-get update && apt-get install -y espeak-ng`")
    out = Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    # 2. Sentences in a fixed pseudo-random order; voice i % len(VOICES).
    sentences = stdlib_sentences()
    order = np.random.default_rng(args.seed).permutation(len(sentences))
    jobs = [(sentences[j], i % len(VOICES)) for i, j in enumerate(order[: args.max_utterances])]
    # 3. Synthesize in order (threads only wait on espeak), keep 1-4 s, stop at the byte budget.
    from tqdm import tqdm

    chunks, items, total = [], [], 0  # chunks: uint8 mu-law per utterance
    bar = tqdm(total=len(jobs), desc="espeak-ng")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for b in range(0, len(jobs), 64):  # batches, so nothing past the budget is synthesized
            batch = jobs[b: b + 64]
            for (text, v), x in zip(batch, pool.map(lambda job: synthesize(job[0], VOICES[job[1]]), batch)):
                bar.update(1)
                if total >= args.max_seconds * SAMPLE_RATE or not (SAMPLE_RATE <= len(x) <= 4 * SAMPLE_RATE):
                    continue
                items.append({"text": text, "voice": v})
                chunks.append(mulaw_encode(x))
                total += len(x)
            if total >= args.max_seconds * SAMPLE_RATE:
                break
    bar.close()
    # 4. Deterministic 5% validation split (by transcript hash, so every voice is represented) and the files.
    source = "first sentences of Python stdlib docstrings, espeak-ng " + _espeak_version()
    write_data(out, chunks, [it["text"] for it in items], [it["voice"] for it in items], VOICES, source)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    if size > 24:
        print(f"WARNING: {size:.1f} MB exceeds the 24 MB carry budget; lower --max-seconds")
    print(f"{len(items)} utterances, {total / SAMPLE_RATE / 60:.1f} min, {size:.1f} MB in {out}")


def write_data(out: Path, mulaw: list[np.ndarray], texts: list[str], voices: list[int], voice_list: list[dict],
               source: str) -> None:
    """Write a data set: ``audio.mulaw.xz`` (lzma'd concatenated uint8 mu-law) + ``index.json``."""
    out.mkdir(parents=True, exist_ok=True)
    items, offset = [], 0
    for q, text, v in zip(mulaw, texts, voices):
        items.append({"offset": offset, "length": len(q), "text": text, "voice": int(v), "split": split_of(text)})
        offset += len(q)
    (out / AUDIO_NAME).write_bytes(lzma.compress(np.concatenate(mulaw).tobytes(), preset=9))
    index = {"sample_rate": SAMPLE_RATE, "encoding": "mulaw8", "voices": voice_list, "source": source,
             "utterances": items}
    (out / "index.json").write_text(json.dumps(index))


def _espeak_version() -> str:
    try:
        return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split()[3]
    except Exception:
        return "unknown"


def load_data(data_dir: str | Path) -> tuple[dict, list[np.ndarray]]:
    """``index.json`` and the decoded float32 waveforms (one array per utterance, 16 kHz)."""
    data_dir = Path(data_dir)
    index = json.loads((data_dir / "index.json").read_text())
    audio = mulaw_decode(np.frombuffer(lzma.decompress((data_dir / AUDIO_NAME).read_bytes()), np.uint8))
    wavs = [audio[u["offset"]: u["offset"] + u["length"]] for u in index["utterances"]]
    return index, wavs


# ----------------------------------------------------------------------------------------- train
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


class Clock:
    """Wall-clock budget of the whole run, re-split among the stages still to run."""

    def __init__(self, budget: float, reserve: float):
        self.t0, self.end = time.time(), time.time() + budget - reserve

    def deadline(self, stage: str, todo: list[str]) -> float:
        """Deadline for ``stage`` given the stages ``todo`` (including it) that share the remaining time."""
        left = max(0.0, self.end - time.time())
        return time.time() + left * SHARES[stage] / sum(SHARES[s] for s in todo)

    def elapsed(self) -> float:
        return time.time() - self.t0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def lr_at(progress: float, step: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% over the time budget."""
    warm = min(1.0, (step + 1) / warmup)
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_ckpt(path: Path, **state) -> None:
    """Atomic torch.save (a crash mid-write never leaves a truncated checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    from tqdm import tqdm

    from .codec import ZooCodec

    torch.manual_seed(args.seed)
    codec = ZooCodec(**cfg["codec"]).to(device).train()
    opt = torch.optim.AdamW(codec.parameters(), lr=1e-3, betas=(0.8, 0.99))
    audio = torch.from_numpy(np.concatenate(train_wavs)).to(device)  # [N] all training audio
    seg, B = cfg["segment"], cfg["codec_batch"]
    step, spent, path = 0, 0.0, ckpt_dir / "codec.ckpt"
    # 1. Resume (weights, optimizer, step, time already spent).
    if path.exists():
        st = torch.load(path, map_location=device, weights_only=False)
        codec.model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        step, spent = st["step"], st["spent"]
    mels, start, last_save = mel_losses(codec.sample_rate, device), time.time(), time.time()
    total = spent + max(1e-6, deadline - start)
    bar = tqdm(desc="codec", unit="step", initial=step)
    gen = torch.Generator(device="cpu").manual_seed(args.seed + step)
    while time.time() < deadline:
        # 2. A batch of random segments.
        offs = torch.randint(0, len(audio) - seg, (B,), generator=gen).to(device)
        wav = audio[offs[:, None] + torch.arange(seg, device=device)].unsqueeze(1)  # [B, 1, S]
        # 3. One optimizer step with a time-based cosine schedule.
        progress = (spent + time.time() - start) / total
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, step, 1e-3, warmup=50)
        loss, parts = codec_loss(codec, mels, wav)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 25 == 0:  # (the only host syncs besides encodec's dead-code check)
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items()})
        # 4. Checkpoint every minute.
        if time.time() - last_save > 60:
            save_ckpt(path, model=codec.model.state_dict(), opt=opt.state_dict(), step=step,
                      spent=spent + time.time() - start)
            last_save = time.time()
    bar.close()
    print(f"codec: {step} steps" + "".join(f", {k} {v.item():.4f}" for k, v in (parts if step else {}).items()))
    return codec.eval(), step


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


def lm_tensors(items: list[dict], codes: list[np.ndarray], K: int, pad_id: int, eos_id: int) -> dict:
    """Whole data set as LM tensors: left-padded text ``[N, L]``, input frames / targets ``[N, S, K]``.

    Per utterance: codes ``[K, T]`` + an EOS column -> delay -> ``[K, T + K]`` targets; inputs are the
    BOS (pad) frame followed by the targets shifted right by one step. Targets past the end are -100.
    """
    from .lm import apply_delay

    steps = []
    for c in codes:
        c = torch.from_numpy(c.astype(np.int64))  # [K, T]
        ext = torch.cat([c, torch.full((K, 1), eos_id)], dim=1)  # [K, T + 1]
        steps.append(apply_delay(ext[None], pad_id)[0].T)  # [T + K, K]
    return steps_tensors(items, steps, K, pad_id)


def steps_tensors(items: list[dict], steps: list, K: int, pad_id: int) -> dict:
    """``lm_tensors`` from LM steps in the delayed layout (each ``[n, K]``, as the LM emits them: a row may
    stop before its EOS); the targets are the steps, the inputs the BOS frame + the steps shifted by one."""
    from .lm import TEXT_PAD, encode_text

    texts = [encode_text(it["text"], it["voice"]) for it in items]
    tlen = np.array([len(t) for t in texts])
    alen = np.array([len(d) for d in steps])
    N, L, S = len(items), int(tlen.max()), int(alen.max())
    text = torch.full((N, L), TEXT_PAD, dtype=torch.long)
    tmask = torch.zeros(N, L, dtype=torch.long)
    inp = torch.full((N, S, K), pad_id, dtype=torch.long)
    tgt = torch.full((N, S, K), -100, dtype=torch.long)
    for i, (t, d) in enumerate(zip(texts, steps)):
        d = torch.as_tensor(np.asarray(d), dtype=torch.long)  # [n, K]
        inp[i, 1: len(d)] = d[:-1]
        tgt[i, : len(d)] = d
        text[i, L - len(t):] = torch.tensor(t)
        tmask[i, L - len(t):] = 1
    return dict(text=text, tmask=tmask, inp=inp, tgt=tgt, tlen=tlen, alen=alen)


def lm_batch(data: dict, idx: np.ndarray, device) -> tuple:
    """Rows ``idx`` cut to their longest text / audio: (text [B, L], mask [B, L + S], inp [B, S, K], tgt)."""
    L, S = int(data["tlen"][idx].max()), int(data["alen"][idx].max())
    ii = torch.from_numpy(idx).to(data["text"].device)
    text, tmask = data["text"][ii, -L:], data["tmask"][ii, -L:]
    mask = torch.cat([tmask, torch.ones_like(tmask[:, :1]).expand(-1, S)], dim=1)
    return text.to(device), mask.to(device), data["inp"][ii, :S].to(device), data["tgt"][ii, :S].to(device)


def lm_step_loss(model, batch, device, teacher=None):
    """Mean next-frame cross-entropy over real targets (+ KL(teacher || model) when a teacher is given)."""
    import torch.nn.functional as F

    text, mask, inp, tgt = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:]
    logits = logits.float()  # [B, S, K, V]
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    if teacher is None:
        return ce, ce
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        t_logits = teacher(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:]
    valid = (tgt != -100).float()  # [B, S, K]
    t_logp, logp = t_logits.float().log_softmax(-1), logits.log_softmax(-1)
    kl = ((t_logp.exp() * (t_logp - logp)).sum(-1) * valid).sum() / valid.sum()
    return 0.5 * ce + 0.5 * kl, ce


@torch.no_grad()
def lm_eval_loss(model, data: dict, idx: np.ndarray, device, batch: int = 32) -> float:
    """Token-weighted mean cross-entropy (nats) over the rows ``idx``."""
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(idx), batch):
        text, mask, inp, tgt = lm_batch(data, idx[i: i + batch], device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:]
        V = logits.shape[-1]
        total += F.cross_entropy(logits.float().reshape(-1, V), tgt.reshape(-1), ignore_index=-100,
                                 reduction="sum").item()
        count += int((tgt != -100).sum())
    return total / max(1, count)


def train_lm(name, model, data, train_idx, valid_idx, device, deadline, ckpt_dir: Path, batch: int, lr: float,
             seed: int, teacher=None, distill_after: float = 0.4, eval_every: int = 100, ckpt_every: float = 60.0):
    """Stage 3 / 4: AdamW, bf16 autocast on CUDA, time-based cosine schedule, resumable.

    With a ``teacher``, the last ``1 - distill_after`` of the stage's time also distils its logits.
    Held-out cross-entropy is measured every ``eval_every`` steps; the best weights are returned
    (the data set is small, so late steps can overfit). A checkpoint in ``ckpt_dir`` (written every
    ``ckpt_every`` s) is resumed from. Returns (model, steps, best valid CE).
    """
    from tqdm import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    step, spent, best, path = 0, 0.0, (float("inf"), None), ckpt_dir / f"{name}.ckpt"
    # 1. Resume.
    if path.exists():
        st = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        step, spent, best = st["step"], st["spent"], st["best"]
    rng = np.random.default_rng(seed + step)
    start, last_save = time.time(), time.time()
    total = spent + max(1e-6, deadline - start)
    bar = tqdm(desc=name, unit="step", initial=step)
    while time.time() < deadline:
        # 2. Random batch, schedule, optional distillation.
        model.train()
        progress = (spent + time.time() - start) / total
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, step, lr)
        idx = rng.choice(train_idx, size=min(batch, len(train_idx)), replace=False)
        use_teacher = teacher if progress >= distill_after else None
        loss, ce = lm_step_loss(model, lm_batch(data, idx, device), device, use_teacher)
        # 3. Update.
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        # 4. Held-out loss: keep the best weights (on the CPU).
        if step % eval_every == 0 and len(valid_idx):
            v = lm_eval_loss(model, data, valid_idx, device)
            if v < best[0]:
                best = (v, {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()})
            bar.set_postfix(ce=f"{ce.item():.3f}", valid=f"{v:.3f}", distill=use_teacher is not None)
        # 5. Checkpoint every ``ckpt_every`` seconds.
        if time.time() - last_save > ckpt_every:
            save_ckpt(path, model=model.state_dict(), opt=opt.state_dict(), step=step, best=best,
                      spent=spent + time.time() - start)
            last_save = time.time()
    bar.close()
    # 6. Final held-out loss; restore the best weights if an earlier step was better.
    final = lm_eval_loss(model, data, valid_idx, device) if len(valid_idx) else float("inf")
    if best[1] is not None and best[0] < final:
        model.load_state_dict(best[1])
    print(f"{name}: {step} steps, valid CE final {final:.4f}, best {min(final, best[0]):.4f}")
    return model.eval(), step, min(final, best[0])


def speech_meta(codec, lm_cfg, index: dict, role: str, codec_path: str) -> dict:
    """The ``mmspec_speech.json`` the speech adapter reads next to ``lm/``."""
    from .lm import TEXT_BOS, TEXT_EOS, TEXT_PAD, VOICE_BASE

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
    from .codec import ZooCodec
    from .lm import SpeechLM, SpeechLMConfig

    # 1. Set-up: budget (from now: data loading counts), device, sizes, data, checkpoint folder.
    clock = Clock(args.time_budget, reserve=min(20.0, 0.05 * args.time_budget))
    device, cfg = resolve_device(args.device), (QUICK if args.quick else FULL)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    index, wavs = load_data(args.data)
    items = index["utterances"][: cfg.get("max_utterances")]
    wavs = wavs[: len(items)]
    train_idx = np.array([i for i, u in enumerate(items) if u["split"] == "train"])
    valid_idx = np.array([i for i, u in enumerate(items) if u["split"] == "valid"])
    out = Path(args.out)
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    tgt_dir, dft_dir = out / "speech", out / "speech-draft"
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
    K, C = codec.num_codebooks, codec.codebook_size
    base = dict(num_codebooks=K, codebook_size=C, num_voices=len(index["voices"]))
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in lm_tensors(items, codes, K, C, C + 1).items()}
    summary["codes_done_s"] = round(clock.elapsed(), 1)
    # 4. Stage 3: target LM; 5. stage 4: draft LM (distilled from the target in its last 60%).
    models = {}
    for role, folder, todo in (("target", tgt_dir, ["target", "draft"]), ("draft", dft_dir, ["draft"])):
        lm_cfg = SpeechLMConfig(**base, **cfg[role])
        if (folder / "lm" / "config.json").exists():
            model = SpeechLM.from_pretrained(folder / "lm", dtype=torch.float32).to(device).eval()
        else:
            torch.manual_seed(args.seed + len(role))
            model = SpeechLM(lm_cfg).to(device)
            lr = 2e-3 if role == "draft" else 1e-3
            model, steps, _ = train_lm(role, model, data, train_idx, valid_idx, device,
                                       clock.deadline(role, todo), ckpt, cfg["lm_batch"], lr, args.seed,
                                       teacher=models.get("target"), eval_every=cfg["eval_every"])
            save_lm(model, folder / "lm")
            summary[f"{role}_steps"] = steps
        models[role] = model
        summary[f"{role}_params"] = sum(p.numel() for p in model.parameters())
        summary[f"{role}_valid_ce"] = round(lm_eval_loss(model, data, valid_idx, device), 4)
        summary[f"{role}_done_s"] = round(clock.elapsed(), 1)
        codec_path = "codec" if role == "target" else "../speech/codec"
        meta = speech_meta(codec, lm_cfg, index, role, codec_path)
        (folder / "mmspec_speech.json").write_text(json.dumps(meta, indent=2))
    # 6. Summary; drop the (large, fp32 + optimizer) checkpoints unless asked to keep them.
    summary["codec_params"] = sum(p.numel() for p in codec.parameters())
    summary["total_s"] = round(clock.elapsed(), 1)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if not args.keep_checkpoints:
        shutil.rmtree(ckpt, ignore_errors=True)
    print(json.dumps(summary, indent=2))


# ----------------------------------------------------------------------------------------- distill
def self_generated(target, items: list[dict], batch: int, max_steps: int) -> list[np.ndarray]:
    """The target's own greedy LM steps ``[n, K]`` (int16, delayed layout, up to its end or ``max_steps``)
    for every (text, voice) item, generated with mmspec's autoregressive loop, one voice per batch."""
    from tqdm import tqdm

    from mmspec.loop import autoregressive

    out: list = [None] * len(items)
    bar = tqdm(total=len(items), desc="target greedy")
    for v in sorted({it["voice"] for it in items}):
        target.voice = v
        idx = [i for i, it in enumerate(items) if it["voice"] == v]
        idx.sort(key=lambda i: len(items[i]["text"]))  # similar lengths share a batch
        for b in range(0, len(idx), batch):
            rows = idx[b: b + batch]
            gen = autoregressive(target, [items[i]["text"] for i in rows], max_new_tokens=max_steps)
            for r, i in enumerate(rows):
                out[i] = gen.tokens[r, : int(gen.lengths[r])].cpu().numpy().astype(np.int16)  # [n, K]
            bar.update(len(rows))
    bar.close()
    return out


def distill(args) -> None:
    """Sequence-level distillation of the draft on the target's own greedy output (CPU-friendly).

    What speculative decoding needs from a draft is the target's next frame on the target's OWN outputs,
    so the training set here is not audio: every transcript of the corpus (all of the stdlib sentences,
    with voice i % voices; no espeak-ng or codec needed) is spoken by the target with greedy decoding,
    and the draft is trained with cross-entropy on those frames (optionally plus KL to the target's
    logits, ``--kl``). The 5% validation split of the transcripts is held out. The draft starts from
    ``--init`` (the shipped draft by default) or from scratch with ``--hidden/--layers``.
    """
    from mmspec.bench import hardware

    from .lm import SpeechLM, SpeechLMConfig
    from .target import SpeechTarget

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    zoo, out = Path(args.zoo), Path(args.out)
    ckpt = out / "checkpoints"
    device = resolve_device(args.device)
    # 1. Transcripts: every stdlib sentence, voices in turn.
    meta = json.loads((zoo / "speech" / "mmspec_speech.json").read_text())
    n_voices = len(meta["voices"])
    texts = stdlib_sentences()[: args.max_texts]
    items = [{"text": t, "voice": i % n_voices, "split": split_of(t)} for i, t in enumerate(texts)]
    if not any(it["split"] == "valid" for it in items) or all(it["split"] == "valid" for it in items):
        raise ValueError(f"--max-texts {args.max_texts} leaves no held-out or no training transcript "
                         f"(about 1 in 20 is held out); use at least 40")
    # 2. The target's greedy steps (cached: the slow part on a CPU).
    target = SpeechTarget.from_pretrained(str(zoo / "speech"), load_codec=False, device=str(device))
    ckpt.mkdir(parents=True, exist_ok=True)
    cache = ckpt / f"greedy_steps_{len(items)}.npz"
    t0 = time.time()
    if cache.exists():  # (generation_s: the time of the run that generated it)
        saved = np.load(cache)
        gen = [saved[f"s{i}"] for i in range(len(items))]
        gen_s = float(saved["generation_s"]) if "generation_s" in saved else time.time() - t0
    else:
        gen = self_generated(target, items, args.gen_batch, meta["max_frames"] + meta["num_codebooks"])
        gen_s = time.time() - t0
        np.savez(cache, generation_s=np.array(gen_s), **{f"s{i}": s for i, s in enumerate(gen)})
    K, C = meta["num_codebooks"], meta["codebook_size"]
    ended = sum(bool((s[:, -1] == C + 1).any()) for s in gen)
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in steps_tensors(items, gen, K, C).items()}
    train_idx = np.array([i for i, it in enumerate(items) if it["split"] == "train"])
    valid_idx = np.array([i for i, it in enumerate(items) if it["split"] == "valid"])
    n_steps = int(sum(len(s) for s in gen))
    print(f"{len(items)} target utterances ({len(train_idx)} train / {len(valid_idx)} valid, {ended} ended "
          f"within {meta['max_frames']} frames), {n_steps} steps, generated in {gen_s:.0f} s")
    # 3. The draft: the shipped one or a fresh one of the asked size.
    if args.init:
        draft = SpeechLM.from_pretrained(args.init, dtype=torch.float32)
        draft = grow_layers(draft, args.grow_layers).to(device) if args.grow_layers else draft.to(device)
    else:
        sizes = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                     num_key_value_heads=max(1, args.heads // 2), intermediate_size=args.hidden * 3)
        draft = SpeechLM(SpeechLMConfig(num_codebooks=K, codebook_size=C, num_voices=n_voices, **sizes)).to(device)
    teacher = target.model.float()  # fp32 for the scores (and the KL, with --kl)
    before = lm_eval_loss(draft, data, valid_idx, device)
    draft, steps, best = train_lm("distill", draft, data, train_idx, valid_idx, device, time.time() + args.minutes * 60,
                                  ckpt, args.batch, args.lr, args.seed, teacher=teacher if args.kl else None, distill_after=0.0,
                                  eval_every=args.eval_every)
    agree = draft_agreement(teacher, draft, data, valid_idx)
    # 4. Save the draft next to the target (fp16, same metadata) with a record of this stage.
    folder = out / "speech-draft"
    save_lm(draft, folder / "lm")
    dmeta = json.loads((zoo / "speech-draft" / "mmspec_speech.json").read_text())
    (folder / "mmspec_speech.json").write_text(json.dumps(dmeta, indent=2))
    record = {"stage": "sequence-level distillation on the target's greedy output", "device": hardware(device),
              "texts": len(items), "train_utterances": len(train_idx), "valid_utterances": len(valid_idx),
              "ended": ended, "steps_generated": n_steps, "generation_s": round(gen_s, 1), "steps": steps,
              "minutes": args.minutes, "kl": bool(args.kl), "params": sum(p.numel() for p in draft.parameters()),
              "valid_ce_on_target_greedy_before": round(before, 4), "valid_ce_on_target_greedy": round(best, 4),
              "greedy_top1_agreement_valid": agree, "layers": draft.config.num_hidden_layers, "init": _short_path(args.init, zoo) if args.init else "scratch"}
    earlier = Path(args.init).parent / "distill_summary.json" if args.init else None
    if earlier is not None and earlier.exists():  # the init was itself distilled: keep its record
        record["previous"] = json.loads(earlier.read_text())
    (folder / "distill_summary.json").write_text(json.dumps(record, indent=2) + "\n")
    card = folder / "README.md"
    source = card if card.exists() else zoo / "speech-draft" / "README.md"
    base = source.read_text() if source.exists() else "# mmspec speech zoo: draft codec LM\n"
    card.write_text(base.split(DISTILL_HEADING)[0].rstrip("\n") + "\n\n" + "\n".join(distill_lines(record)))
    if not args.keep_checkpoints:  # the resumable state and the generated steps: nothing left in the zoo
        (ckpt / "distill.ckpt").unlink(missing_ok=True)
        cache.unlink(missing_ok=True)
        if not any(ckpt.iterdir()):
            ckpt.rmdir()
    print(json.dumps(record, indent=2))


def grow_layers(model, layers: int):
    """A copy of a ``SpeechLM`` with ``layers`` decoder layers: the old ones first, then new ones whose
    attention and MLP output projections are zero, so each new layer starts as the identity (the grown
    model computes exactly what the old one did) and training can only add to it."""
    from .lm import SpeechLM, SpeechLMConfig

    old = model.config.num_hidden_layers
    if layers < old:
        raise ValueError(f"--grow-layers {layers} is fewer than the init's {old} layers")
    cfg = SpeechLMConfig(**{**model.config.to_dict(), "num_hidden_layers": layers})
    grown = SpeechLM(cfg)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".layers." in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        for layer in grown.backbone.layers[old:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return grown


def _short_path(path: str, zoo: Path) -> str:
    """``path`` relative to the zoo folder when it lies inside it (model cards travel with the zoo)."""
    try:
        return str(Path(path).resolve().relative_to(zoo.resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------- evaluate
def si_snr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant signal-to-noise ratio in dB (zero-mean signals, same length)."""
    est, ref = est - est.mean(), ref - ref.mean()
    proj = (est @ ref) / (ref @ ref + 1e-12) * ref
    return float(10 * np.log10((proj @ proj + 1e-12) / ((est - proj) @ (est - proj) + 1e-12)))


def log_mel(x: np.ndarray, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """log-mel spectrogram ``[64, frames]`` (n_fft 1024, hop 256) of a mono waveform."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sr, n_fft=1024, hop_length=256, n_mels=64)
    return torch.log(mel(torch.from_numpy(x).float()) + 1e-5)


def audio_stats(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict:
    """Measured properties: duration, RMS (dBFS), spectral flatness, voiced fraction and median F0.

    Voicing: 40 ms frames with RMS above -40 dBFS whose normalised autocorrelation peak in 60-400 Hz
    exceeds 0.5 (espeak's voiced segments are strongly periodic; noise is not).
    """
    n, hop = int(0.04 * sr), int(0.02 * sr)
    frames = [x[i: i + n] for i in range(0, len(x) - n, hop)]
    voiced, f0s, loud = 0, [], 0
    for f in frames:
        f = f - f.mean()
        if np.sqrt((f ** 2).mean()) < 0.01:
            continue
        loud += 1
        ac = np.correlate(f, f, "full")[n - 1:]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / (ac[0] + 1e-12) > 0.5:
            voiced, f0s = voiced + 1, f0s + [sr / lag]
    spec = np.abs(np.fft.rfft(x[: len(x) // n * n].reshape(-1, n) * np.hanning(n), axis=1)) ** 2 + 1e-10
    flat = float(np.mean(np.exp(np.log(spec).mean(1)) / spec.mean(1)))
    return {"duration_s": round(len(x) / sr, 2), "rms_dbfs": round(float(20 * np.log10(np.sqrt((x ** 2).mean()) + 1e-9)), 1),
            "spectral_flatness": round(flat, 4), "loud_frames": loud,
            "voiced_fraction_of_loud": round(voiced / max(1, loud), 3),
            "median_f0_hz": round(float(np.median(f0s)), 1) if f0s else None}


def write_wav(path: Path, x: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit mono WAV with the standard-library ``wave`` module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())


@torch.no_grad()
def sample_speech(model, text: str, voice: int, max_frames: int, top_k: int = 50, temperature: float = 1.0,
                  seed: int = 0, min_frames: int = 10) -> torch.Tensor:
    """KV-cached sampling of the delayed stream -> codes ``[1, K, T]`` (evaluation baseline only).

    Constraints that keep the stream valid: codebook k is ``pad_id`` at steps s < k; real codes only
    (codebook 0 may also end with ``eos_id``) until codebook 0 ends; then K - 1 closing steps.
    """
    from .lm import encode_text, revert_delay

    cfg = model.config
    K, C, pad, eos = cfg.num_codebooks, cfg.codebook_size, cfg.pad_id, cfg.eos_id
    gen = torch.Generator().manual_seed(seed)
    text_ids = torch.tensor([encode_text(text, voice)])
    frame = torch.full((1, 1, K), pad)  # the BOS frame
    out = model(text_ids=text_ids, audio_frames=frame, use_cache=True)
    cache, cols, end = out.past_key_values, [], None
    for s in range(max_frames + K):
        # 1. Warp: temperature, allowed ids per codebook, top-k.
        logits = out.logits[0, -1].float() / temperature  # [K, V]
        logits[:, C:] = -float("inf")
        if end is None and s >= min_frames:
            logits[0, eos] = out.logits[0, -1, 0, eos].float() / temperature
        kth = logits.topk(min(top_k, C), dim=-1).values[:, -1:]
        probs = torch.where(logits < kth, -float("inf"), logits).softmax(-1)
        col = torch.multinomial(probs, 1, generator=gen)[:, 0]  # [K]
        # 2. Delay constraints.
        for k in range(K):
            if s < k or (end is not None and s >= end + k):
                col[k] = pad
        if end is None and (col[0] == eos or s == max_frames):
            end = s
            col[0] = eos
        cols.append(col)
        if end is not None and s >= end + K - 2:
            break
        out = model(audio_frames=col.view(1, 1, K), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
    delayed = torch.stack(cols, dim=1)[None, :, : end + K - 1]  # [1, K, T + K - 1]
    return revert_delay(delayed)  # [1, K, T]


def evaluate_codec(codec, wavs: list[np.ndarray]) -> dict:
    """Reconstruction quality on held-out utterances: log-mel L1 distance and SI-SNR (means)."""
    mel_d, snr = [], []
    for x in wavs:
        y = codec.decode(codec.encode(torch.from_numpy(x)[None, None]))[0, 0, : len(x)].numpy()
        mel_d.append(float((log_mel(y) - log_mel(x)).abs().mean()))
        snr.append(si_snr(y, x))
    return {"utterances": len(wavs), "log_mel_l1": round(float(np.mean(mel_d)), 4),
            "si_snr_db": round(float(np.mean(snr)), 2)}


@torch.no_grad()
def draft_agreement(target, draft, data: dict, idx: np.ndarray) -> float:
    """Teacher-forced top-1 agreement of draft and target over real targets (a proxy for acceptance)."""
    text, mask, inp, tgt = lm_batch(data, idx, torch.device("cpu"))
    p = target(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:].argmax(-1)
    q = draft(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:].argmax(-1)
    valid = tgt != -100
    return round(float((p == q)[valid].float().mean()), 4)


def sox_info(path: Path) -> str:
    """``sox --i`` and ``sox stat`` output when sox is installed (else a note)."""
    if shutil.which("sox") is None:
        return "sox not installed"
    info = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True).stdout
    stat = subprocess.run(["sox", str(path), "-n", "stat"], capture_output=True, text=True).stderr
    return info.strip() + "\n" + stat.strip()


def evaluate(args) -> None:
    """Codec metrics, LM validation losses, 3 sampled utterances and model cards (CPU, a few minutes)."""
    from .codec import ZooCodec
    from .lm import SpeechLM

    torch.manual_seed(args.seed)
    zoo = Path(args.zoo)
    index, wavs = load_data(args.data)
    valid = [i for i, u in enumerate(index["utterances"]) if u["split"] == "valid"][: args.max_valid]
    # 1. Codec reconstruction on held-out audio.
    codec = ZooCodec.from_pretrained(zoo / "speech" / "codec")
    report = {"codec": evaluate_codec(codec, [wavs[i] for i in valid])}
    print("codec", report["codec"])
    # 2. LM validation cross-entropy (codes from the shipped codec) and draft/target agreement.
    items = [index["utterances"][i] for i in valid]
    codes = encode_all(codec, [wavs[i] for i in valid], torch.device("cpu"))
    C = codec.codebook_size
    data = lm_tensors(items, codes, codec.num_codebooks, C, C + 1)
    rows = np.arange(len(items))
    lms = {r: SpeechLM.from_pretrained(zoo / f, dtype=torch.float32).eval()
           for r, f in (("target", "speech/lm"), ("draft", "speech-draft/lm"))}
    for role, m in lms.items():
        report[f"{role}_valid_ce"] = round(lm_eval_loss(m, data, rows, torch.device("cpu")), 4)
        report[f"{role}_params"] = sum(p.numel() for p in m.parameters())
    report["draft_target_top1_agreement"] = draft_agreement(lms["target"], lms["draft"], data, rows)
    print({k: v for k, v in report.items() if k != "codec"})
    # 3. Three samples from held-out transcripts (+ the espeak references, measured the same way).
    meta = json.loads((zoo / "speech" / "mmspec_speech.json").read_text())
    report["samples"] = []
    by_voice = {}
    for i in valid:  # the first held-out utterance of each voice, then the rest
        by_voice.setdefault(index["utterances"][i]["voice"], i)
    picks = (list(by_voice.values()) + [i for i in valid if i not in by_voice.values()])[: args.samples]
    for n, i in enumerate(picks):
        u = index["utterances"][i]
        codes = sample_speech(lms["target"], u["text"], u["voice"], meta["max_frames"], top_k=args.top_k,
                              seed=args.seed + n)
        y = codec.decode(codes)[0, 0].numpy()
        path = zoo / "speech" / "samples" / f"sample{n}.wav"
        write_wav(path, y)
        report["samples"].append({"file": f"samples/{path.name}", "text": u["text"],
                                  "voice": index["voices"][u["voice"]]["name"], "generated": audio_stats(y),
                                  "espeak_reference": audio_stats(wavs[i]), "sox": sox_info(path)})
        print(report["samples"][-1]["text"], report["samples"][-1]["generated"])
    (zoo / "speech" / "evaluation.json").write_text(json.dumps(report, indent=2))
    write_cards(zoo, report, meta)


def _sample_lines(report: dict) -> list[str]:
    """Model-card lines describing the generated samples by measured properties only."""
    lines = []
    for smp in report.get("samples", []):
        g, r = smp["generated"], smp["espeak_reference"]
        lines.append(f"* `{smp['file']}` ({smp['voice']}): \"{smp['text']}\" -- {g['duration_s']} s "
                     f"(espeak reference {r['duration_s']} s), RMS {g['rms_dbfs']} dBFS (ref {r['rms_dbfs']}), "
                     f"spectral flatness {g['spectral_flatness']} (ref {r['spectral_flatness']}), voiced fraction "
                     f"{g['voiced_fraction_of_loud']} (ref {r['voiced_fraction_of_loud']}), median F0 "
                     f"{g['median_f0_hz']} Hz (ref {r['median_f0_hz']} Hz). {_voicing_verdict(g, r)}")
    return lines


def _voicing_verdict(g: dict, r: dict) -> str:
    """A measured (not listened) verdict: espeak-like voicing = at least half the reference's voiced
    fraction with a median F0 within 30% of the reference's."""
    f0_ok = g["median_f0_hz"] and r["median_f0_hz"] and abs(g["median_f0_hz"] / r["median_f0_hz"] - 1) < 0.3
    if g["voiced_fraction_of_loud"] >= 0.5 * r["voiced_fraction_of_loud"] and f0_ok:
        return "Espeak-like voicing is present by this measure."
    return "Espeak-like voicing is NOT present by this measure."


def write_cards(zoo: Path, report: dict, meta: dict) -> None:
    """``README.md`` model cards for ``speech/`` and ``speech-draft/`` from the train and eval summaries."""
    summ_path = zoo / "train_summary.json"
    tr = json.loads(summ_path.read_text()) if summ_path.exists() else {}
    hw = (f"Trained on {tr.get('device', 'unknown hardware')} in {tr.get('total_s', '?')} s wall time "
          f"(budget {tr.get('time_budget_s', '?')} s, shared with other jobs), "
          f"{tr.get('train_utterances', '?')} training utterances.")
    c = report["codec"]
    common = [
        "Data: English sentences (first sentences of Python standard-library docstrings) synthesized with "
        f"espeak-ng in {len(meta['voices'])} voices ({', '.join(meta['voices'])}), 16 kHz, stored as 8-bit "
        "mu-law; 5% of utterances held out. This is robotic formant-synthesis speech, not human speech.",
        f"Codec (the zoo's `speech/codec`, an encodec `EncodecModel` built from its SEANet/RVQ modules): "
        f"{meta['num_codebooks']} codebooks x {meta['codebook_size']} codes at {meta['frame_rate']} Hz, "
        f"{tr.get('codec_steps', '?')} steps (waveform L1 + multi-resolution mel L1 + commitment; no "
        f"adversarial loss). Held-out reconstruction: log-mel L1 {c['log_mel_l1']}, SI-SNR {c['si_snr_db']} dB.",
        "Format: see `mmspec_speech.json` and the docstring of `mmspec.speech.lm` (text bytes + voice token, "
        "then delayed codec frames; parallel heads, logits `[B, T, K, V]`).",
        "Load: `ZooCodec.from_pretrained(<zoo>/speech/codec)` (`mmspec.speech.codec`) and "
        "`SpeechLM.from_pretrained(<folder>/lm, dtype=torch.float32)` (`mmspec.speech.lm`); weights are fp16 "
        "safetensors. Rebuild with `python -m mmspec.speech.recipe prepare|train|evaluate`.",
    ]
    tgt = ["# mmspec speech zoo: target codec LM", "", hw, "", *common, "",
           f"LM: Llama backbone, {report['target_params'] / 1e6:.2f}M parameters, "
           f"{tr.get('target_steps', '?')} steps; held-out cross-entropy {report['target_valid_ce']} nats/token.", "",
           "## Samples (not listened to: measured properties only)", "",
           "Sampled with top-k 50, temperature 1, from held-out transcripts; the espeak reference is the "
           "original held-out utterance. Voiced fraction = share of loud 40 ms frames with a periodic "
           "(autocorrelation > 0.5) pitch between 60 and 400 Hz.", "", *_sample_lines(report), "",
           "Limitations: a toy model trained for minutes on ~40 minutes of synthetic speech; intelligibility "
           "is not measured and should not be assumed. Its purpose is to exercise speculative decoding of "
           "codec LMs offline.", ""]
    distilled = zoo / "speech-draft" / "distill_summary.json"
    then = ", then the `distill` stage below. On real espeak codes: held-out" if distilled.exists() else ". Held-out"
    dft = ["# mmspec speech zoo: draft codec LM", "", hw, "", *common, "",
           f"Draft LM: {report['draft_params'] / 1e6:.2f}M parameters, same vocabulary, codebooks and text "
           f"format as the target (`../speech`), {tr.get('draft_steps', '?')} steps (cross-entropy, then "
           f"distillation on the target's logits){then} cross-entropy {report['draft_valid_ce']} nats/token; "
           f"teacher-forced top-1 agreement with the target {report['draft_target_top1_agreement']}.", "",
           "The codec lives in `../speech/codec`.", ""]
    if distilled.exists():
        dft += distill_lines(json.loads(distilled.read_text()))
    (zoo / "speech" / "README.md").write_text("\n".join(tgt))
    (zoo / "speech-draft" / "README.md").write_text("\n".join(dft))


DISTILL_HEADING = "## Distillation on the target's own greedy output"


def distill_lines(rec: dict) -> list[str]:
    """The draft card's section written by ``distill`` (and kept by ``evaluate``): one paragraph per stage."""
    stages = []
    while rec:
        stages.insert(0, rec)
        rec = rec.get("previous")
    data = stages[-1]
    kept = " and were kept" if data.get("kept", data["texts"]) != data["texts"] else ""
    lines = [DISTILL_HEADING, "",
             f"The target spoke {data['texts']} transcripts (every stdlib sentence, voices in turn; "
             f"{data['ended']} ended within the frame limit{kept}) with greedy decoding in "
             f"{data['generation_s']:.0f} s on {data['device']}: {data['steps_generated']:,} LM steps, "
             f"{data['valid_utterances']} transcripts held out. Speculative decoding only needs the draft to "
             "predict the target, so no audio is involved in this stage. Held-out scores are against the target's "
             "greedy steps; agreement is teacher-forced top-1 per codebook token (delay padding included). The "
             "draft now models the target's greedy speech rather than the espeak audio, so its cross-entropy on "
             "real held-out codes (the `evaluate` numbers above) is higher than before this stage; what it buys "
             "is acceptance under greedy decoding (BENCHMARKS.md).", ""]
    for n, st in enumerate(stages, 1):
        before = stages[n - 2].get("layers") if n > 1 else None
        grow = f", grown to {st['layers']} layers (new layers start as the identity)" \
            if before is not None and st.get("layers", before) > before else ""
        lines += [f"{n}. `python -m mmspec.speech.recipe distill --minutes {st['minutes']:g}"
                  f"{' --grow-layers ' + str(st['layers']) if grow else ''}`: from {st['init']}{grow}, "
                  f"{st['params'] / 1e6:.2f}M parameters, {st['steps']} steps of cross-entropy"
                  f"{' + KL to the target logits' if st['kl'] else ''} on {st['device']}; held-out cross-entropy "
                  f"{st['valid_ce_on_target_greedy_before']} -> {st['valid_ce_on_target_greedy']} nats/token, "
                  f"agreement {st['greedy_top1_agreement_valid']}."]
    return lines + [""]


# ----------------------------------------------------------------------------------------- CLI
def main(argv=None) -> None:
    """Entry point: ``prepare`` / ``train`` / ``evaluate``."""
    parser = argparse.ArgumentParser(prog="mmspec.speech.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="synthesize the espeak-ng data set (CPU)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--max-seconds", type=float, default=2600.0,
                   help="audio budget in seconds (lzma mu-law: about 11 kB/s)")
    p.add_argument("--max-utterances", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train codec, target LM and draft LM (GPU or CPU)")
    t.add_argument("--data", default=str(DEFAULT_DATA))
    t.add_argument("--out", default=str(DEFAULT_OUT))
    t.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    t.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run (400; quick 60)")
    t.add_argument("--quick", action="store_true", help="tiny models and data: a CPU smoke test")
    t.add_argument("--keep-checkpoints", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="metrics, samples and model cards (CPU)")
    e.add_argument("--data", default=str(DEFAULT_DATA))
    e.add_argument("--zoo", default=str(DEFAULT_OUT))
    e.add_argument("--max-valid", type=int, default=24)
    e.add_argument("--samples", type=int, default=3)
    e.add_argument("--top-k", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("distill", help="distil the draft on the target's own greedy output (CPU or GPU)")
    d.add_argument("--zoo", default=str(DEFAULT_OUT), help="folder holding speech/ and speech-draft/")
    d.add_argument("--out", default=str(DEFAULT_OUT), help="writes <out>/speech-draft")
    d.add_argument("--init", default=str(DEFAULT_OUT / "speech-draft" / "lm"),
                   help="draft LM to start from; '' trains a fresh one of --hidden/--layers/--heads")
    d.add_argument("--grow-layers", type=int, default=None,
                   help="grow the --init draft to this many layers (new layers start as the identity)")
    d.add_argument("--hidden", type=int, default=128)
    d.add_argument("--layers", type=int, default=1)
    d.add_argument("--heads", type=int, default=4)
    d.add_argument("--max-texts", type=int, default=None)
    d.add_argument("--gen-batch", type=int, default=64)
    d.add_argument("--minutes", type=float, default=30.0, help="training time (resumable)")
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--kl", action="store_true", help="also KL to the target's logits (slower on a CPU)")
    d.add_argument("--eval-every", type=int, default=200)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    d.add_argument("--keep-checkpoints", action="store_true")
    d.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "train" and args.time_budget is None:
        args.time_budget = 60.0 if args.quick else 400.0
    {"prepare": prepare, "train": train, "evaluate": evaluate, "distill": distill}[args.cmd](args)


if __name__ == "__main__":
    main()
