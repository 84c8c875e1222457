"""What every image zoo stage shares: sizes, the run (device, budget, checkpoints) and the training loop.

The plumbing is ``mmspec.training``'s; this module only binds it to the image stages' step functions.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time

import torch
import torch.nn.functional as F

from mmspec.training import (Clock, Schedule, StageClock, load_checkpoint, progress_bar, save_checkpoint,
                             set_lr, setup_device, update)

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


class Run:
    """Device, autocast, budget and checkpoint bookkeeping shared by the stages."""

    def __init__(self, args, cfg: dict):
        self.cfg, self.quick = cfg, args.quick
        self.device = setup_device(args.device, cudnn_benchmark=True)
        self.budget = float(args.time_budget or cfg["default_budget"])
        self.clock = Clock(self.budget, reserve=self.budget * RESERVE_S, shares=SHARES)
        self.t_start = self.clock.t0
        self.ckpt_dir = args.ckpt_dir or os.path.join("runs", "image-zoo" + ("-quick" if args.quick else ""))
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self.tag = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
        self.log: dict = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def stage_budget(self, name: str) -> float:
        """Seconds for ``name``: its share of what is left, among the stages still to run (at least 1 s)."""
        return self.clock.seconds(name, floor=1.0)

    def ckpt_path(self, name: str) -> str:
        return os.path.join(self.ckpt_dir, f"{name}.ckpt")

    def load(self, name: str) -> tuple[dict, dict] | None:
        """``(state, tensors)`` of a stage's checkpoint if it was written by the same configuration, else None."""
        blob = load_checkpoint(self.ckpt_path(name))
        return blob if blob is not None and blob[0].get("tag") == self.tag else None

    def save(self, name: str, state: dict, **tensors) -> None:
        save_checkpoint(self.ckpt_path(name), {**state, "tag": self.tag}, **tensors)


def lr_at(progress: float, lr_max: float, warmup: float = 0.03) -> float:
    """Linear warmup from 10%, then cosine decay to 10% of ``lr_max``; ``progress`` in [0, 1]."""
    return Schedule(lr_max, floor=0.1, warmup=warmup, warmup_start=0.1)(progress)


def train_loop(run: Run, name: str, model, step_fn, max_steps: int, lr_max: float, extra=None):
    """Optimise ``model`` with ``step_fn(step) -> loss`` until max_steps or the stage's time is up.

    Resumes from ``<ckpt_dir>/<name>.ckpt``; a finished stage only reloads its weights. ``extra`` is a
    dict of tensors saved alongside (e.g. the VQ code-usage statistics). Returns the stage log.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr_max, betas=(0.9, 0.95), weight_decay=0.05)
    step, prev_elapsed, losses = 0, 0.0, []
    if (blob := run.load(name)) is not None:  # 1. resume
        state, tensors = blob
        model.load_state_dict(tensors["model"])
        if extra is not None:
            for k, v in tensors["extra"].items():
                extra[k].copy_(v)
        if state["done"]:
            return state["log"]
        opt.load_state_dict(tensors["opt"])
        step, prev_elapsed, losses = state["step"], state["elapsed"], state["log"]["losses"]
    budget = run.stage_budget(name)
    clock, t_ckpt, running = StageClock(time.time() + budget, prev_elapsed), time.time(), None
    schedule = Schedule(lr_max, floor=0.1, warmup=0.03, warmup_start=0.1)
    model.train()
    bar = progress_bar(f"{name} ({budget:.0f}s)", total=max_steps, initial=step)
    while step < max_steps and clock.running():
        # 2. schedule by progress in steps or in time, whichever is further
        set_lr(opt, schedule(max(step / max_steps, clock.progress())))
        # 3. one optimisation step
        loss = step_fn(step)
        update(model, opt, loss)
        step += 1
        running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
        if step % 50 == 0 or step == max_steps:  # one sync every 50 steps
            losses.append([step, round(running.item(), 5)])
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        bar.update(1)
        # 4. periodic checkpoint
        if time.time() - t_ckpt > 60:
            log = {"steps": step, "seconds": clock.elapsed(), "losses": losses}
            run.save(name, {"step": step, "elapsed": log["seconds"], "log": log, "done": False},
                     model=model.state_dict(), opt=opt.state_dict(), extra=extra or {})
            t_ckpt = time.time()
    bar.close()
    return _finish(run, name, model, step, running, losses, clock, extra)


def _finish(run: Run, name: str, model, step: int, running, losses: list, clock: StageClock, extra) -> dict:
    """The stage log (with the final smoothed loss); a ``done`` checkpoint a rerun only reloads."""
    if running is not None and (not losses or losses[-1][0] != step):
        losses.append([step, round(running.item(), 5)])
    log = {"steps": step, "seconds": round(clock.elapsed(), 1), "losses": losses,
           "final_loss": losses[-1][1] if losses else None}
    run.save(name, {"step": step, "elapsed": log["seconds"], "log": log, "done": True},
             model=model.state_dict(), extra=extra or {})
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
