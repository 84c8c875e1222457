"""What every image zoo stage shares: sizes, the run (device, budget, checkpoints) and the training loop.

The plumbing (the stage loop, checkpoints, schedule) is ``mmspec.training``'s; this module only binds it
to the image stages' step functions and keeps their sizes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import torch
import torch.nn.functional as F

from mmspec.training import Clock, Schedule, Stage, adamw, autocast, setup_device, train_stage

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
        return autocast(self.device)

    def stage_budget(self, name: str) -> float:
        """Seconds for ``name``: its share of what is left, among the stages still to run (at least 1 s)."""
        return self.clock.seconds(name, floor=1.0)

    def ckpt_path(self, name: str) -> str:
        return os.path.join(self.ckpt_dir, f"{name}.ckpt")


def train_loop(run: Run, name: str, model, step_fn, max_steps: int, lr_max: float, extra=None):
    """Optimise ``model`` with ``step_fn(step) -> loss`` until max_steps or the stage's time is up.

    Runs on the shared stage loop (``mmspec.training.train_stage``). Resumes from ``<ckpt_dir>/<name>.ckpt``
    when it was written by the same configuration; a finished stage only reloads its weights. ``extra``
    is a dict of tensors saved alongside (e.g. the VQ code-usage statistics). Returns the stage log.
    """
    budget = run.stage_budget(name)
    smoothed = Smoothed(max_steps)
    stage = Stage(name, model, adamw(model.parameters(), lr_max, betas=(0.9, 0.95), weight_decay=0.05),
                  lambda start: lambda step, progress: (step_fn(step), None),
                  Schedule(lr_max, floor=0.1, warmup=0.03, warmup_start=0.1), budget,
                  checkpoint=run.ckpt_path(name), max_steps=max_steps, watch=smoothed, finish=smoothed.finish,
                  state={"losses": []}, extra=extra or {}, key={"tag": run.tag}, mark_done=True,
                  desc=f"{name} ({budget:.0f}s)", unit="it")
    state = train_stage(stage)
    model.eval()
    return state["log"]


class Smoothed:
    """An image stage's loss log: a smoothed loss (EMA 0.98), one row ``[step, loss]`` every 50 steps."""

    def __init__(self, max_steps: int):
        self.max_steps, self.running = max_steps, None

    def __call__(self, state: dict, loss, aux, progress: float, clock) -> dict | None:
        loss = loss.detach()
        self.running = loss if self.running is None else 0.98 * self.running + 0.02 * loss
        if state["step"] % 50 == 0 or state["step"] == self.max_steps:  # one sync every 50 steps
            state["losses"].append([state["step"], round(self.running.item(), 5)])
            return {"loss": f"{state['losses'][-1][1]:.4f}"}
        return None

    def finish(self, state: dict, clock) -> None:
        """The stage log (with the final smoothed loss), kept in the state a rerun reloads."""
        losses, step = state["losses"], state["step"]
        if self.running is not None and (not losses or losses[-1][0] != step):
            losses.append([step, round(self.running.item(), 5)])
        state["elapsed"] = round(clock.elapsed(), 1)
        state["log"] = {"steps": step, "seconds": state["elapsed"], "losses": losses,
                        "final_loss": losses[-1][1] if losses else None}


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
