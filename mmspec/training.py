"""One training harness for the zoo recipes: device set-up, time budgets, LR schedule, checkpoints, bars.

The recipes (``mmspec.<modality>.recipe``) own their data, models and losses; what every one of them
needs to train inside a wall-clock budget and resume after a crash lives here, once:

* ``setup_device``: cpu/cuda (``"auto"`` picks), the seed, TF32 matrix products on CUDA;
* ``Clock``: the whole run's budget, re-split among the stages still to run; ``StageClock``: one
  stage's elapsed time and progress, carried over a resume;
* ``Schedule``: linear warmup then cosine decay to a floor (warmup by progress or by steps);
* ``save_checkpoint`` / ``load_checkpoint``: atomic writes (temp file, then ``os.replace``), loaded
  with ``torch.load(..., weights_only=True)``: tensors in named state dicts, everything else JSON;
* ``update`` (one optimizer step with gradient clipping), ``set_lr``, ``progress_bar``, ``hardware``.

The harness knows no modality: it sees models, optimizers, seconds and numbers.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "mmspec.training/1"


# ------------------------------------------------------------------------------------------ device
def pick_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; any other name as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def setup_device(name: str, seed: int | None = None, cudnn_benchmark: bool = False) -> torch.device:
    """The run's device with the seed set (when given) and TF32 matrix products on CUDA."""
    device = pick_device(name)
    if seed is not None:
        torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
    return device


def hardware(device) -> str:
    """A human string naming the hardware (a device name or ``torch.device``), for logs and model cards."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        name = names[0] if names else name
    return f"{name} CPU, {os.cpu_count()} cores"


# ------------------------------------------------------------------------------------------ budgets
class Clock:
    """Wall-clock budget of a whole run (minus a reserve kept for saving), split among its stages.

    ``shares`` maps stage names (in run order) to their weights; a stage gets its weight's share of the
    time left among the stages still to run, so an early stage that finishes early leaves time to the rest.
    """

    def __init__(self, budget: float, reserve: float = 0.0, shares: dict[str, float] | None = None):
        self.t0 = time.time()
        self.end = self.t0 + budget - reserve
        self.shares = dict(shares or {})

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        """Seconds until the end of the budget (negative once it is over)."""
        return self.end - time.time()

    def seconds(self, stage: str, todo: list[str] | None = None, floor: float = 0.0) -> float:
        """Seconds for ``stage``: its share of the time left among ``todo`` (default: it and the stages after it)."""
        names = list(self.shares)
        todo = names[names.index(stage):] if todo is None else todo
        share = self.shares[stage] / sum(self.shares[s] for s in todo)
        return max(floor, max(0.0, self.left()) * share)

    def deadline(self, stage: str, todo: list[str] | None = None) -> float:
        """The ``time.time()`` by which ``stage`` should stop."""
        return time.time() + self.seconds(stage, todo)


class StageClock:
    """One stage's time: ``spent`` seconds from earlier runs (a resume) plus this run's, against a deadline.

    ``progress()`` is the share of the stage's total time used; the total is ``total`` when given (fixed
    when the stage first started), else what was spent plus what is left until the deadline.
    """

    def __init__(self, deadline: float, spent: float = 0.0, total: float | None = None):
        self.start, self.deadline, self.spent = time.time(), deadline, spent
        self.total = total if total is not None else spent + max(1e-6, deadline - self.start)

    def elapsed(self) -> float:
        return self.spent + time.time() - self.start

    def progress(self) -> float:
        return self.elapsed() / self.total

    def running(self) -> bool:
        return time.time() < self.deadline


# ------------------------------------------------------------------------------------------ schedule
@dataclass(frozen=True)
class Schedule:
    """Learning rate: linear warmup, then cosine decay from ``peak`` to ``floor * peak``.

    Warmup either by progress (``warmup`` share of the stage: the factor rises linearly from
    ``warmup_start`` to 1, never below ``warmup_min``; the cosine starts after it) or by steps
    (``warmup_steps``: the cosine of the whole stage times ``min(1, (step + 1) / warmup_steps)``).
    """

    peak: float
    floor: float = 0.1
    warmup: float = 0.0
    warmup_start: float = 0.0
    warmup_min: float = 0.0
    warmup_steps: int = 0

    def __call__(self, progress: float, step: int = 0) -> float:
        if progress < self.warmup:
            ramp = self.warmup_start + (1 - self.warmup_start) * progress / self.warmup
            return self.peak * max(ramp, self.warmup_min)
        q = min((progress - self.warmup) / (1 - self.warmup), 1.0)
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.peak * warm * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * q)))


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def update(model, opt, loss, clip: float = 1.0) -> None:
    """One optimizer step: fresh gradients of ``loss``, norm clipped to ``clip``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | Path, state: dict, **tensors) -> None:
    """Atomically write ``state`` (JSON-able: numbers, strings, lists, dicts) and named tensor dicts.

    ``tensors``: name -> a (nested) dict of tensors such as ``model.state_dict()`` or
    ``opt.state_dict()``. Written to ``path.tmp`` then renamed, so a crash never leaves a torn file.
    """
    path = Path(path)
    blob = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state), "tensors": tensors}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[dict, dict] | None:
    """``(state, tensors)`` of a checkpoint written by ``save_checkpoint``; None when there is none.

    Loads with ``weights_only=True`` (no code runs on load); a file in another format is ignored.
    """
    path = Path(path)
    if not path.exists():
        return None
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        print(f"[checkpoint] {path} is not a {CHECKPOINT_FORMAT} checkpoint; starting afresh", flush=True)
        return None
    return json.loads(blob["state"]), blob["tensors"]


# ------------------------------------------------------------------------------------------ progress
def progress_bar(desc: str, total: float | None = None, initial: int = 0, unit: str = "it"):
    """A tqdm bar that redraws every second on a terminal and every 10 s in a log file."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit,
                mininterval=1.0 if sys.stderr.isatty() else 10.0)
