"""Offline image zoo recipe: train and evaluate the "shapes" target, drafter, VQ tokenizer, classifier.

    python -m mmspec.image.recipe train --out image/zoo --device cuda --time-budget 400
    python -m mmspec.image.recipe train --out /tmp/zoo --quick            # ~1 CPU minute smoke run
    python -m mmspec.image.recipe evaluate --out image/zoo                # CPU, writes model cards

``train`` runs: data -> classifier -> VQ tokenizer -> encode data set -> AR target -> AR draft
(distilled from the target). Each stage gets a share of the remaining wall-clock budget, stops
cleanly when it runs out, and keeps resumable checkpoints in ``--ckpt-dir``. The zoo format is
documented in :mod:`mmspec.image.models`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import shapes
from .models import (FORMAT, META_FILE, ShapesClassifier, build_transformer, build_vqvae,
                     decode_codes, encode_images, guided_logits, load_zoo, sample_codes, to_uint8)

TRAIN_SEED, HELDOUT_SEED = 0, 1

FULL = dict(n_train=60000, n_heldout=2000, vq_channels=(32, 64, 128), num_codes=512, embed_dim=32,
            vq_batch=256, vq_lr=6e-4, vq_steps=100_000, cls_steps=1500, cls_batch=256,
            ar_hidden=384, ar_layers=6, ar_heads=6, ar_batch=256, ar_lr=6e-4, ar_steps=100_000,
            dr_hidden=128, dr_layers=2, dr_heads=4, dr_lr=1.5e-3, dr_steps=100_000, flip_aug=True,
            default_budget=400.0)
QUICK = dict(n_train=768, n_heldout=96, vq_channels=(16, 16, 32), num_codes=64, embed_dim=16,
             vq_batch=16, vq_lr=2e-3, vq_steps=40, cls_steps=20, cls_batch=32,
             ar_hidden=64, ar_layers=2, ar_heads=2, ar_batch=32, ar_lr=2e-3, ar_steps=40,
             dr_hidden=32, dr_layers=1, dr_heads=2, dr_lr=3e-3, dr_steps=30, flip_aug=False,
             default_budget=60.0)
# share of the remaining budget per timed stage, in order (data / encode / save are untimed)
SHARES = {"classifier": 0.04, "vqvae": 0.30, "target": 0.50, "draft": 0.16}
RESERVE_S = 0.03  # fraction of the budget kept for encoding and saving


# ------------------------------------------------------------------------------------- plumbing
class Run:
    """Device, autocast, budget and checkpoint bookkeeping shared by the stages."""

    def __init__(self, args, cfg: dict):
        self.cfg, self.quick = cfg, args.quick
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
        self.budget = float(args.time_budget or cfg["default_budget"])
        self.t_start = time.time()
        self.ckpt_dir = args.ckpt_dir or os.path.join("runs", "image-zoo" + ("-quick" if args.quick else ""))
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self.tag = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
        self.log: dict = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def stage_budget(self, name: str) -> float:
        """Seconds for ``name``: its share of what is left, among the stages still to run."""
        names = list(SHARES)
        rest = sum(SHARES[n] for n in names[names.index(name):])
        left = self.budget * (1 - RESERVE_S) - (time.time() - self.t_start)
        return max(1.0, left * SHARES[name] / rest)

    def ckpt_path(self, name: str) -> str:
        return os.path.join(self.ckpt_dir, f"{name}.ckpt")

    def load(self, name: str):
        """The checkpoint of a stage if it was written by the same configuration, else None."""
        path = self.ckpt_path(name)
        if not os.path.exists(path):
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        return state if state.get("tag") == self.tag else None

    def save(self, name: str, state: dict) -> None:
        tmp = self.ckpt_path(name) + ".tmp"
        torch.save({**state, "tag": self.tag}, tmp)
        os.replace(tmp, self.ckpt_path(name))


def lr_at(progress: float, lr_max: float, warmup: float = 0.03) -> float:
    """Linear warmup, then cosine decay to 10% of ``lr_max``; ``progress`` in [0, 1]."""
    if progress < warmup:
        return lr_max * (0.1 + 0.9 * progress / warmup)
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return lr_max * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_loop(run: Run, name: str, model, step_fn, max_steps: int, lr_max: float, extra=None):
    """Optimise ``model`` with ``step_fn(step) -> loss`` until max_steps or the stage's time is up.

    Resumes from ``<ckpt_dir>/<name>.ckpt``; a finished stage only reloads its weights. ``extra`` is a
    dict of tensors saved alongside (e.g. the VQ code-usage statistics). Returns the stage log.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr_max, betas=(0.9, 0.95), weight_decay=0.05)
    step, prev_elapsed, losses = 0, 0.0, []
    state = run.load(name)
    if state is not None:  # 1. resume
        model.load_state_dict(state["model"])
        if extra is not None:
            for k, v in state.get("extra", {}).items():
                extra[k].copy_(v)
        if state["done"]:
            return state["log"]
        opt.load_state_dict(state["opt"])
        step, prev_elapsed, losses = state["step"], state["elapsed"], state["log"]["losses"]
    budget = run.stage_budget(name)
    t0, t_ckpt, running = time.time(), time.time(), None
    model.train()
    bar = tqdm(total=max_steps, initial=step, desc=f"{name} ({budget:.0f}s)", mininterval=2.0)
    while step < max_steps:
        # 2. schedule by progress in steps or in time, whichever is further
        now = time.time() - t0
        if now > budget:
            break
        progress = max(step / max_steps, (prev_elapsed + now) / (prev_elapsed + budget))
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, lr_max)
        # 3. one optimisation step
        loss = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
        if step % 50 == 0 or step == max_steps:  # one sync every 50 steps
            losses.append([step, round(running.item(), 5)])
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        bar.update(1)
        # 4. periodic checkpoint
        if time.time() - t_ckpt > 60:
            log = {"steps": step, "seconds": prev_elapsed + time.time() - t0, "losses": losses}
            run.save(name, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                            "elapsed": log["seconds"], "log": log, "done": False,
                            "extra": extra or {}})
            t_ckpt = time.time()
    bar.close()
    if running is not None and (not losses or losses[-1][0] != step):
        losses.append([step, round(running.item(), 5)])
    log = {"steps": step, "seconds": round(prev_elapsed + time.time() - t0, 1), "losses": losses,
           "final_loss": losses[-1][1] if losses else None}
    run.save(name, {"model": model.state_dict(), "step": step, "elapsed": log["seconds"],
                    "log": log, "done": True, "extra": extra or {}})
    model.eval()
    return log


def to_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2, same as 8-bit PSNR)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


# ---------------------------------------------------------------------------------------- stages
def random_batch(n: int, size: int, device) -> torch.Tensor:
    return torch.randint(0, n, (size,), device=device)


def maybe_flip(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip per image of [B, 3, H, W] (every class is mirror-invariant)."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def train_classifier(run: Run, x_u8: torch.Tensor, y: torch.Tensor) -> tuple[ShapesClassifier, dict]:
    """Tiny CNN on real images, with flips and pixel noise so VQ artefacts do not fool it."""
    cfg, n = run.cfg, x_u8.shape[0]
    model = ShapesClassifier(shapes.NUM_CLASSES).to(run.device)

    def step_fn(step: int) -> torch.Tensor:
        idx = random_batch(n, cfg["cls_batch"], run.device)
        x = maybe_flip(to_pixels(x_u8[idx]))  # [B, 3, 32, 32]
        x = x + 0.04 * torch.randn_like(x)
        with run.autocast():
            logits = model(x)  # [B, C]
        return F.cross_entropy(logits.float(), y[idx])

    return model, train_loop(run, "classifier", model, step_fn, cfg["cls_steps"], 2e-3)


def train_vqvae(run: Run, x_u8: torch.Tensor):
    """VQModel with MSE + 0.1 L1 reconstruction, codebook + commitment loss, dead-code restarts.

    Quantisation is done here (nearest code, straight-through) with the model's own codebook, then
    ``decode(..., force_not_quantize=True)``: the same maths as ``VQModel.quantize`` at inference,
    but with the restart bookkeeping the stock module lacks.
    """
    cfg, n = run.cfg, x_u8.shape[0]
    vq = build_vqvae(cfg["vq_channels"], cfg["num_codes"], cfg["embed_dim"]).to(run.device)
    book = vq.quantize.embedding.weight  # [N, E]
    usage = torch.zeros(cfg["num_codes"], device=run.device)  # EMA of per-step counts

    def step_fn(step: int) -> torch.Tensor:
        # 1. encode a batch
        x = maybe_flip(to_pixels(x_u8[random_batch(n, cfg["vq_batch"], run.device)]))  # [B, 3, 32, 32]
        with run.autocast():
            z = vq.encode(x).latents
        z = z.float()  # [B, E, h, w]
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)  # [B*h*w, E]
        # 2. codebook init from encoder outputs, then restarts of codes nobody picks
        with torch.no_grad():
            if step == 0:
                book.data.copy_(flat[torch.randint(0, flat.shape[0], (book.shape[0],), device=flat.device)])
            idx = torch.cdist(flat.detach(), book.float()).argmin(1)  # [B*h*w]
            usage.mul_(0.98).add_(0.02 * torch.bincount(idx, minlength=book.shape[0]))
            if step % 100 == 99:
                dead = usage < 0.03 * flat.shape[0] / book.shape[0]
                src = flat[torch.randint(0, flat.shape[0], (book.shape[0],), device=flat.device)]
                book.data[dead] = src[dead] + 0.01 * torch.randn_like(src[dead])
                usage[dead] = flat.shape[0] / book.shape[0]
        # 3. quantise (straight-through) and decode
        zq = F.embedding(idx, book)  # [B*h*w, E]
        vq_loss = F.mse_loss(zq, flat.detach()) + 0.25 * F.mse_loss(flat, zq.detach())
        zq_st = (flat + (zq - flat).detach()).view(b, h, w, e).permute(0, 3, 1, 2)  # [B, E, h, w]
        with run.autocast():
            rec = vq.decode(zq_st, force_not_quantize=True).sample
        rec = rec.float()  # [B, 3, 32, 32]
        return F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + vq_loss

    log = train_loop(run, "vqvae", vq, step_fn, cfg["vq_steps"], cfg["vq_lr"], extra={"usage": usage})
    return vq, log


@torch.no_grad()
def encode_all(vq, x_u8: torch.Tensor, flip: bool, batch: int = 1024) -> torch.Tensor:
    """Codes of every image (and of its mirror image when ``flip``): [N or 2N, h*w] long."""
    chunks = []
    for views in ([False, True] if flip else [False]):
        for i in range(0, x_u8.shape[0], batch):
            x = to_pixels(x_u8[i:i + batch])
            chunks.append(encode_images(vq, x.flip(3) if views else x).flatten(1))  # [b, h*w]
    return torch.cat(chunks)


@torch.no_grad()
def vq_report(vq, classifier, xh_u8: torch.Tensor, yh: torch.Tensor) -> dict:
    """Held-out PSNR, code usage, and classifier accuracy on real vs reconstructed images."""
    x = to_pixels(xh_u8)
    codes = encode_images(vq, x)
    rec = decode_codes(vq, codes)
    num_codes = vq.quantize.embedding.weight.shape[0]
    acc_real = (classifier(x).argmax(-1) == yh).float().mean().item()
    acc_rec = (classifier(rec).argmax(-1) == yh).float().mean().item()
    return {"psnr_db": round(psnr(rec, x), 2),
            "codebook_usage": round(codes.unique().numel() / num_codes, 3),
            "classifier_acc_real": round(acc_real, 4), "classifier_acc_reconstructed": round(acc_rec, 4)}


def train_ar(run: Run, name: str, model, codes: torch.Tensor, labels: torch.Tensor, lr: float,
             steps: int, teacher=None) -> dict:
    """Next-code prediction on [class, codes] with 10% null-class dropout (so CFG works).

    With a ``teacher`` the loss is 0.5 * data CE + 0.5 * KL(teacher || model) on the same inputs,
    which raises the drafter's acceptance rate under the target.
    """
    cfg, n = run.cfg, codes.shape[0]
    num_codes, null_id = cfg["num_codes"], cfg["num_codes"] + shapes.NUM_CLASSES

    def step_fn(step: int) -> torch.Tensor:
        idx = random_batch(n, cfg["ar_batch"], run.device)
        tgt = codes[idx]  # [B, L]
        cls = labels[idx] + num_codes  # [B]
        cls = torch.where(torch.rand(cls.shape, device=cls.device) < 0.1, torch.full_like(cls, null_id), cls)
        inp = torch.cat([cls[:, None], tgt[:, :-1]], dim=1)  # [B, L]
        with run.autocast():
            logits = model(input_ids=inp).logits[..., :num_codes]
        logits = logits.float()  # [B, L, N]
        loss = F.cross_entropy(logits.reshape(-1, num_codes), tgt.reshape(-1))
        if teacher is not None:
            with torch.no_grad(), run.autocast():
                t_logits = teacher(input_ids=inp).logits[..., :num_codes]
            t_logp = t_logits.float().log_softmax(-1)
            kl = (t_logp.exp() * (t_logp - logits.log_softmax(-1))).sum(-1).mean()
            loss = 0.5 * loss + 0.5 * kl
        return loss

    return train_loop(run, name, model, step_fn, steps, lr)


@torch.no_grad()
def heldout_nll(model, codes: torch.Tensor, labels: torch.Tensor, num_codes: int) -> float:
    """Mean per-code negative log-likelihood (nats) of held-out code sequences, class-conditional."""
    inp = torch.cat([labels[:, None] + num_codes, codes[:, :-1]], dim=1)
    logits = model(input_ids=inp).logits[..., :num_codes].float()
    return round(F.cross_entropy(logits.reshape(-1, num_codes), codes.reshape(-1)).item(), 4)


# ------------------------------------------------------------------------------------------ saving
def meta_for(cfg: dict, grid: int, vqvae_rel: str, role: str, cfg_scale: float = 3.0) -> dict:
    """Contents of ``mmspec_image.json`` (token layout documented in :mod:`mmspec.image.models`)."""
    n = cfg["num_codes"]
    return {"format": FORMAT, "role": role, "class_names": list(shapes.CLASS_NAMES),
            "image_size": shapes.IMAGE_SIZE, "grid_h": grid, "grid_w": grid, "num_codes": n,
            "code_offset": 0, "class_token_ids": [n + i for i in range(shapes.NUM_CLASSES)],
            "null_token_id": n + shapes.NUM_CLASSES, "vocab_size": n + shapes.NUM_CLASSES + 1,
            "sequence": "[class_token] + codes (raster order)", "pixel_range": [-1, 1],
            "default_cfg_scale": cfg_scale, "vqvae": vqvae_rel}


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (bf16 autocast), torch {torch.__version__}"
    return f"CPU {platform.machine()} x{os.cpu_count()}, torch {torch.__version__}"


def save_zoo(run: Run, out: str, vq, target, draft, classifier, grid: int) -> None:
    """Write fp16 ``save_pretrained`` folders and the json metadata (see models.py for the format)."""
    t_dir, d_dir = os.path.join(out, "shapes"), os.path.join(out, "shapes-draft")
    # 1. target, drafter, VQ tokenizer as fp16 copies (training copies stay fp32)
    copy.deepcopy(target).to("cpu", torch.float16).save_pretrained(os.path.join(t_dir, "transformer"))
    copy.deepcopy(draft).to("cpu", torch.float16).save_pretrained(os.path.join(d_dir, "transformer"))
    copy.deepcopy(vq).to("cpu", torch.float16).save_pretrained(os.path.join(t_dir, "vqvae"))
    classifier.save(os.path.join(t_dir, "classifier"), {"class_names": list(shapes.CLASS_NAMES)})
    # 2. metadata and the training log
    for d, rel, role in ((t_dir, "vqvae", "target"), (d_dir, "../shapes/vqvae", "draft")):
        with open(os.path.join(d, META_FILE), "w") as f:
            json.dump(meta_for(run.cfg, grid, rel, role), f, indent=2)
        with open(os.path.join(d, "training.json"), "w") as f:
            json.dump(run.log, f, indent=2)


# ------------------------------------------------------------------------------------------- train
def train(args) -> None:
    cfg = dict(QUICK if args.quick else FULL)
    if args.n_train:
        cfg["n_train"] = args.n_train
    run = Run(args, cfg)
    torch.manual_seed(0)
    # 1. data, generated before CUDA starts (worker processes fork cleanly)
    t = time.time()
    x, y = shapes.make_dataset(cfg["n_train"], TRAIN_SEED, workers=args.workers)
    xh, yh = shapes.make_dataset(cfg["n_heldout"], HELDOUT_SEED, workers=args.workers)
    run.log["data"] = {"n_train": len(x), "n_heldout": len(xh), "seconds": round(time.time() - t, 1)}
    print(f"[image zoo] data: {len(x)} + {len(xh)} images in {time.time() - t:.1f}s; device {run.device}")
    dev = run.device
    x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    xh, yh = torch.from_numpy(xh).to(dev), torch.from_numpy(yh).to(dev)
    run.log["hardware"] = hardware(dev)
    # 2. classifier, 3. VQ tokenizer
    classifier, run.log["classifier"] = train_classifier(run, x, y)
    vq, run.log["vqvae"] = train_vqvae(run, x)
    vq.eval()
    run.log["vqvae"].update(vq_report(vq, classifier, xh, yh))
    print(f"[image zoo] vqvae: {run.log['vqvae']}")
    # 4. codes for the whole data set (+ mirror images), once
    codes = encode_all(vq, x, cfg["flip_aug"])  # [N or 2N, h*w]
    labels = y.repeat(codes.shape[0] // y.shape[0])
    codes_h = encode_all(vq, xh, False)
    grid = int(math.isqrt(codes.shape[1]))
    # 5. target, 6. drafter distilled from it
    vocab = cfg["num_codes"] + shapes.NUM_CLASSES + 1
    target = build_transformer(vocab, cfg["ar_hidden"], cfg["ar_layers"], cfg["ar_heads"], codes.shape[1] + 1).to(dev)
    run.log["target"] = train_ar(run, "target", target, codes, labels, cfg["ar_lr"], cfg["ar_steps"])
    run.log["target"]["heldout_nll"] = heldout_nll(target, codes_h, yh, cfg["num_codes"])
    draft = build_transformer(vocab, cfg["dr_hidden"], cfg["dr_layers"], cfg["dr_heads"], codes.shape[1] + 1).to(dev)
    run.log["draft"] = train_ar(run, "draft", draft, codes, labels, cfg["dr_lr"], cfg["dr_steps"], teacher=target)
    run.log["draft"]["heldout_nll"] = heldout_nll(draft, codes_h, yh, cfg["num_codes"])
    for k, m in (("target", target), ("draft", draft), ("vqvae", vq), ("classifier", classifier)):
        run.log[k]["params"] = sum(p.numel() for p in m.parameters())
    # 7. save the zoo
    run.log["total_seconds"] = round(time.time() - run.t_start, 1)
    save_zoo(run, args.out, vq, target, draft, classifier, grid)
    print(f"[image zoo] saved to {args.out} in {time.time() - run.t_start:.0f}s: "
          f"PSNR {run.log['vqvae']['psnr_db']} dB, target nll {run.log['target']['heldout_nll']}, "
          f"draft nll {run.log['draft']['heldout_nll']}")


# ---------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def classify(classifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted class ids of [B, 3, H, W] images in [-1, 1]."""
    return torch.cat([classifier(images[i:i + batch]).argmax(-1) for i in range(0, len(images), batch)])


@torch.no_grad()
def eval_vqvae(zoo, n: int) -> dict:
    """Held-out reconstruction PSNR, code usage, classifier accuracy on real and reconstructed images."""
    xh, yh = shapes.make_dataset(n, HELDOUT_SEED)
    x, y = to_pixels(torch.from_numpy(xh)), torch.from_numpy(yh)
    codes = torch.cat([encode_images(zoo.vqvae, x[i:i + 250]) for i in range(0, n, 250)])  # [n, h, w]
    rec = torch.cat([decode_codes(zoo.vqvae, codes[i:i + 250]) for i in range(0, n, 250)])
    return {"n_heldout": n, "psnr_db": round(psnr(rec, x), 2),
            "codebook_usage": round(codes.unique().numel() / zoo.num_codes, 3),
            "classifier_acc_real": round((classify(zoo.classifier, x) == y).float().mean().item(), 4),
            "classifier_acc_reconstructed": round((classify(zoo.classifier, rec) == y).float().mean().item(), 4)}


@torch.no_grad()
def eval_samples(zoo, model, per_class: int, scale: float, seed: int):
    """Sample ``per_class`` images of every class (row r = r-th sample of each class) and score them."""
    c = len(zoo.class_names)
    cls_ids = torch.tensor(zoo.meta["class_token_ids"]).repeat(per_class)  # [per_class * C]
    gen = torch.Generator().manual_seed(seed)
    length = zoo.meta["grid_h"] * zoo.meta["grid_w"]
    t = time.time()
    codes = sample_codes(model, cls_ids, zoo.null_token_id, zoo.num_codes, length, scale, 1.0, None, gen)
    seconds = time.time() - t
    h, w = zoo.meta["grid_h"], zoo.meta["grid_w"]
    images = decode_codes(zoo.vqvae, codes.view(-1, h, w))  # [B, 3, 32, 32]
    labels = torch.arange(c).repeat(per_class)
    acc = (classify(zoo.classifier, images) == labels).float().mean().item()
    return codes, images, {"cfg_scale": scale, "n": len(labels), "accuracy": round(acc, 4),
                           "sampling_seconds": round(seconds, 1)}


@torch.no_grad()
def acceptance(zoo, draft_model, codes: torch.Tensor, scale: float) -> float:
    """Expected per-token acceptance rate sum_x min(p, q) of the drafter under the guided target.

    Measured on the target's own samples ``codes`` [B, L], temperature 1, same guidance for p and q.
    """
    cls_ids = torch.tensor(zoo.meta["class_token_ids"]).repeat(codes.shape[0] // len(zoo.class_names))
    args = (cls_ids, codes, zoo.null_token_id, zoo.num_codes, scale)
    p = guided_logits(zoo.transformer, *args).softmax(-1)  # [B, L, N]
    q = guided_logits(draft_model, *args).softmax(-1)
    return round(torch.minimum(p, q).sum(-1).mean().item(), 4)


def save_sheet(images: torch.Tensor, n_class: int, rows: int, path: str) -> None:
    """First ``rows`` samples of every class as a grid, one column per class, upscaled 3x."""
    sheet = shapes.grid_image(to_uint8(images[: rows * n_class]).numpy(), n_class)
    sheet.resize((sheet.width * 3, sheet.height * 3), 0).save(path)


def evaluate(args) -> None:
    """Score the zoo on CPU, pick the default guidance scale, write model cards and samples."""
    torch.manual_seed(args.seed)
    t_dir, d_dir = os.path.join(args.out, "shapes"), os.path.join(args.out, "shapes-draft")
    zoo = load_zoo(t_dir)
    draft = load_zoo(d_dir).transformer
    res: dict = {"hardware": hardware(torch.device("cpu"))}
    # 1. tokenizer and classifier on real held-out images
    res["vqvae"] = eval_vqvae(zoo, args.n_heldout)
    print(f"[image zoo] vqvae: {res['vqvae']}")
    # 2. guidance sweep for the target; the default is the smallest scale reaching 80% accuracy
    sweep, kept = [], {}
    for s in [float(v) for v in args.scales.split(",")]:
        codes, images, r = eval_samples(zoo, zoo.transformer, args.per_class, s, args.seed)
        sweep.append(r)
        kept[s] = (codes, images)
        print(f"[image zoo] target cfg {s}: {r}")
    # scale 1 (no guidance) is reported for reference; the default exercises the CFG path
    guided = [r for r in sweep if r["cfg_scale"] > 1] or sweep
    good = [r["cfg_scale"] for r in guided if r["accuracy"] >= 0.8]
    scale = min(good) if good else max(guided, key=lambda r: r["accuracy"])["cfg_scale"]
    res["target_sweep"], res["default_cfg_scale"] = sweep, scale
    # 3. the drafter alone at that scale, and its acceptance rate under the target
    d_codes, d_images, res["draft_samples"] = eval_samples(zoo, draft, args.per_class, scale, args.seed)
    res["draft_acceptance"] = acceptance(zoo, draft, kept[scale][0], scale)
    print(f"[image zoo] draft: {res['draft_samples']}, acceptance {res['draft_acceptance']}")
    # 4. write samples, metadata, model cards
    n_class = len(zoo.class_names)
    save_sheet(kept[scale][1], n_class, 4, os.path.join(t_dir, "samples.png"))
    save_sheet(d_images, n_class, 4, os.path.join(d_dir, "samples.png"))
    for d in (t_dir, d_dir):
        path = os.path.join(d, META_FILE)
        with open(path) as f:
            meta = json.load(f)
        meta["default_cfg_scale"] = scale
        with open(path, "w") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(d, "eval.json"), "w") as f:
            json.dump(res, f, indent=2)
    write_cards(t_dir, d_dir, res)
    print(f"[image zoo] default cfg {scale}; model cards written to {t_dir} and {d_dir}")


def _load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _stage_rows(log: dict, names) -> str:
    rows = ["| stage | params | steps | seconds | final train loss | held-out NLL (nats/code) |",
            "|---|---|---|---|---|---|"]
    for n in names:
        st = log.get(n, {})
        rows.append(f"| {n} | {st.get('params', '?'):,} | {st.get('steps', '?')} | {st.get('seconds', '?')} | "
                    f"{st.get('final_loss', '?')} | {st.get('heldout_nll', '-')} |")
    return "\n".join(rows)


USAGE = """```python
import os, torch
import mmspec.image
from mmspec.image.models import load_zoo, sample_codes, decode_codes, to_uint8
zoo = load_zoo(os.path.join(os.path.dirname(mmspec.image.__file__), "zoo", "{name}"))
cls = torch.tensor([zoo.class_token_id("red ring")] * 4)
codes = sample_codes(zoo.transformer, cls, zoo.null_token_id, zoo.num_codes, 64,
                     cfg_scale=zoo.meta["default_cfg_scale"])            # [4, 64]
images = decode_codes(zoo.vqvae, codes.view(-1, 8, 8))                  # [4, 3, 32, 32] in [-1, 1]
```"""


def write_cards(t_dir: str, d_dir: str, res: dict) -> None:
    """Model cards (README.md) for the target and the drafter from training.json + eval results."""
    log = _load_json(os.path.join(t_dir, "training.json"))
    data, v, vt = log.get("data", {}), res["vqvae"], log.get("vqvae", {})
    sweep = "\n".join(f"| {r['cfg_scale']} | {r['accuracy']:.3f} | {r['n']} | {r['sampling_seconds']} |"
                      for r in res["target_sweep"])
    common = (f"Trained offline from scratch by `python -m mmspec.image.recipe train` on "
              f"{data.get('n_train', '?')} procedural 32x32 images (`mmspec.image.shapes`, 24 classes "
              f"\"<colour> <shape>\", deterministic from (seed, index)); held-out images use seed "
              f"{HELDOUT_SEED}. A toy for testing speculative decoding of image tokens, not a general "
              f"image generator.\n\nTraining hardware: {log.get('hardware', '?')}. Evaluation: "
              f"{res['hardware']}. Token layout and file format: see `mmspec/image/models.py`.\n")
    target = f"""# shapes: class-conditional image-token target (mmspec offline zoo)

{common}
| folder | what |
|---|---|
| `transformer/` | `LlamaForCausalLM` (fp16 safetensors), sequence `[class] + 64 codes`, CFG via null class |
| `vqvae/` | `diffusers.VQModel` (fp16): 32x32 RGB <-> 8x8 grid of {vt.get('params', 0) and 512} codes |
| `classifier/` | tiny CNN scoring generated images (quality proxy) |
| `mmspec_image.json` | class names, token ids, grid, default guidance scale |

## Training

{_stage_rows(log, ["classifier", "vqvae", "target"])}

## Evaluation

* VQ tokenizer, {v['n_heldout']} held-out images: reconstruction PSNR **{v['psnr_db']} dB**, codebook
  usage {v['codebook_usage']:.1%}.
* Classifier accuracy: {v['classifier_acc_real']:.1%} on real held-out images,
  {v['classifier_acc_reconstructed']:.1%} on their VQ reconstructions.
* Samples (temperature 1.0, no top-k), classifier accuracy by guidance scale:

| cfg scale | accuracy | samples | CPU sampling seconds |
|---|---|---|---|
{sweep}

Default guidance scale: **{res['default_cfg_scale']}** (smallest scale above 1 with >= 80% accuracy).

![samples: one column per class, 4 samples each](samples.png)

## Use

{USAGE.format(name=os.path.basename(os.path.normpath(t_dir)))}
"""
    dlog = _load_json(os.path.join(d_dir, "training.json")) or log
    ds = res["draft_samples"]
    draft = f"""# shapes-draft: drafter for the shapes target (mmspec offline zoo)

{common}
Same vocabulary, token layout and VQ tokenizer (`../shapes/vqvae`) as `shapes`; trained on the same
codes with 0.5 * cross-entropy + 0.5 * KL(target || draft) distillation.

## Training

{_stage_rows(dlog, ["draft"])}

## Evaluation (guidance scale {res['default_cfg_scale']}, temperature 1.0)

* Expected acceptance rate per token under the guided target, sum_x min(p, q) on target samples:
  **{res['draft_acceptance']}**.
* Drafter alone: classifier accuracy {ds['accuracy']:.1%} over {ds['n']} samples.

![drafter samples: one column per class](samples.png)

## Use

`load_zoo(os.path.join(os.path.dirname(mmspec.image.__file__), "zoo", "{os.path.basename(os.path.normpath(d_dir))}"))`
returns the drafter with the target's VQ tokenizer.
"""
    for d, text in ((t_dir, target), (d_dir, draft)):
        with open(os.path.join(d, "README.md"), "w") as f:
            f.write(text)


# -------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    """``train`` / ``evaluate`` entry point (``mmspec zoo train image`` forwards here)."""
    parser = argparse.ArgumentParser(prog="python -m mmspec.image.recipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")
    p = sub.add_parser("train", help="train the shapes zoo (VQ, target, draft, classifier)")
    p.add_argument("--out", default=default_out, help="zoo folder (gets shapes/ and shapes-draft/)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--time-budget", type=float, default=None, help="wall-clock seconds for the whole run")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a ~1 minute CPU smoke run")
    p.add_argument("--ckpt-dir", default=None, help="resumable checkpoints (default runs/image-zoo[-quick])")
    p.add_argument("--workers", type=int, default=None, help="data generation processes (default <= 8)")
    p.add_argument("--n-train", type=int, default=None, help="override the number of training images")
    e = sub.add_parser("evaluate", help="score a trained zoo and write its model cards")
    e.add_argument("--out", default=default_out, help="zoo folder to evaluate (and write cards into)")
    e.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    e.add_argument("--per-class", type=int, default=4, help="samples per class for each guidance scale")
    e.add_argument("--scales", default="1,2,3", help="guidance scales to sweep")
    e.add_argument("--n-heldout", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
