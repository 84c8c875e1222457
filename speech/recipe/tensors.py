"""The speech LM's data as tensors (text, delayed frames, targets) and its teacher-forced losses."""
from __future__ import annotations

import numpy as np
import torch

from mmspec.training import autocast, kl_loss


def lm_tensors(items: list[dict], codes: list[np.ndarray], K: int, pad_id: int, eos_id: int) -> dict:
    """Whole data set as LM tensors: left-padded text ``[N, L]``, input frames / targets ``[N, S, K]``.

    Per utterance: codes ``[K, T]`` + an EOS column -> delay -> ``[K, T + K]`` targets; inputs are the
    BOS (pad) frame followed by the targets shifted right by one step. Targets past the end are -100.
    """
    from ..lm import apply_delay

    steps = []
    for c in codes:
        c = torch.from_numpy(c.astype(np.int64))  # [K, T]
        ext = torch.cat([c, torch.full((K, 1), eos_id)], dim=1)  # [K, T + 1]
        steps.append(apply_delay(ext[None], pad_id)[0].T)  # [T + K, K]
    return steps_tensors(items, steps, K, pad_id)


def steps_tensors(items: list[dict], steps: list, K: int, pad_id: int) -> dict:
    """``lm_tensors`` from LM steps in the delayed layout (each ``[n, K]``, as the LM emits them: a row may
    stop before its EOS); the targets are the steps, the inputs the BOS frame + the steps shifted by one."""
    from ..lm import TEXT_PAD, encode_text

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
    with autocast(device):
        logits = model(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:]
    logits = logits.float()  # [B, S, K, V]
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    if teacher is None:
        return ce, ce
    with torch.no_grad(), autocast(device):
        t_logits = teacher(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:]
    valid = (tgt != -100).float()  # [B, S, K]
    return 0.5 * ce + 0.5 * kl_loss(t_logits, logits, valid), ce


@torch.no_grad()
def lm_eval_loss(model, data: dict, idx: np.ndarray, device, batch: int = 32) -> float:
    """Token-weighted mean cross-entropy (nats) over the rows ``idx``."""
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(idx), batch):
        text, mask, inp, tgt = lm_batch(data, idx[i: i + batch], device)
        with autocast(device):
            logits = model(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:]
        V = logits.shape[-1]
        total += F.cross_entropy(logits.float().reshape(-1, V), tgt.reshape(-1), ignore_index=-100,
                                 reduction="sum").item()
        count += int((tgt != -100).sum())
    return total / max(1, count)


@torch.no_grad()
def draft_agreement(target, draft, data: dict, idx: np.ndarray) -> float:
    """Teacher-forced top-1 agreement of draft and target over real targets (a proxy for acceptance)."""
    text, mask, inp, tgt = lm_batch(data, idx, torch.device("cpu"))
    p = target(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:].argmax(-1)
    q = draft(text_ids=text, audio_frames=inp, attention_mask=mask).logits[:, text.shape[1]:].argmax(-1)
    valid = tgt != -100
    return round(float((p == q)[valid].float().mean()), 4)
