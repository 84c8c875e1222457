"""One training harness for the zoo recipes: device set-up, time budgets, LR schedule, checkpoints, bars.

The recipes (``mmspec.<modality>.recipe``) own their data, models and losses; what every one of them
needs to train inside a wall-clock budget and resume after a crash lives here, once:

* ``setup_device``: cpu/cuda (``"auto"`` picks), the seed, TF32 matrix products on CUDA;
* ``Clock``: the whole run's budget, re-split among the stages still to run; ``StageClock``: one
  stage's elapsed time and progress, carried over a resume;
* ``Schedule``: linear warmup then cosine decay to a floor (warmup by progress or by steps);
* ``save_checkpoint`` / ``load_checkpoint``: atomic writes (temp file, then ``os.replace``), loaded
  with ``torch.load(..., weights_only=True)``: tensors in named state dicts, everything else JSON;
* ``update`` (one optimizer step with gradient clipping), ``set_lr``, ``progress_bar``, ``hardware``;
* ``Stage`` and ``train_stage``: the one resumable stage loop (AdamW from ``adamw``, resume, the stage's
  clock, the schedule, periodic checkpoints, the progress bar; ``Best`` keeps the best held-out weights);
* ``kl_loss``: the distillation loss KL(teacher || student) every recipe and ``mmspec heads train`` use;
* ``card`` / ``write_card`` / ``card_table``: the one model-card writer (front matter, title, sections).

The harness knows no modality: it sees models, optimizers, seconds and numbers.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

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


def autocast(device):
    """bf16 autocast on CUDA; nothing (plain fp32) elsewhere."""
    import contextlib

    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def add_stage_options(parser, out: str, what: str, budget: float | None, budget_help: str,
                      quick_help: str) -> None:
    """``--out`` (a folder the user names; ``out`` lies in the working directory, never in the installed
    package), ``--device``, ``--time-budget`` and ``--quick``: what every recipe's training command takes."""
    parser.add_argument("--out", default=out, help=f"{what} (default {out})")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--time-budget", type=float, default=budget, help=budget_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)


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


def adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01, matrices_only: bool = False,
          fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``params`` (a model's parameters), torch's defaults unless given; ``matrices_only``: weight
    decay on matrices only, not on norms and biases."""
    params = list(params)
    if matrices_only:
        params = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


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


# ------------------------------------------------------------------------------------------ the stage loop
class Best:
    """The lowest held-out loss so far and a copy of the weights that gave it (in ``dtype`` on ``device``
    when given, else as the model holds them); ``restore`` puts them back into the model."""

    def __init__(self, dtype: torch.dtype | None = None, device=None):
        self.dtype, self.device = dtype, device
        self.value, self.weights = math.inf, None

    def _copy(self, t: Tensor) -> Tensor:
        dtype = self.dtype if self.dtype is not None and t.is_floating_point() else t.dtype
        return t.detach().to(device=self.device or t.device, dtype=dtype, copy=True)

    def load(self, value: float, weights: dict) -> None:
        """The value and weights a checkpoint kept (``{}``: none yet)."""
        self.value, self.weights = value, {k: self._copy(v) for k, v in weights.items()} or None

    def offer(self, value: float, model) -> bool:
        """Keep ``model``'s weights if ``value`` is lower than every value offered before."""
        if not value < self.value:
            return False
        self.value, self.weights = value, {k: self._copy(v) for k, v in model.state_dict().items()}
        return True

    def restore(self, model) -> None:
        if self.weights:
            model.load_state_dict(self.weights)


TOTALS = ("open", "fixed", "capped")


@dataclass
class Stage:
    """One resumable training stage: what ``train_stage`` trains, how one step's loss is made, its time,
    schedule and checkpoint. The recipe keeps its data, model and losses; the loop does the rest.

    * ``start(step)`` is called once with the step the stage starts at (0, or where its checkpoint left
      off) and returns ``step_fn(step, progress) -> (loss, aux)``: one batch's loss (``aux`` goes to
      ``watch``), so a recipe can seed its batch generator from the resumed step.
    * ``seconds``: this run's time for the stage. ``total`` says what the schedule's time spans: ``"open"``
      the time spent before a resume plus ``seconds``; ``"fixed"`` the first run's ``seconds`` (a resume
      keeps that schedule and may run past it at the floor LR); ``"capped"`` as fixed, and a resume only
      runs what is left of it.
    * ``watch(state, loss, aux, progress, clock)`` runs after each update (logging, held-out loss into
      ``best``) and returns the progress bar's postfix or None; ``finish(state, clock)`` runs once when
      the stage ends (not when a finished stage is only reloaded).
    * ``state``: the recipe's own JSON bookkeeping, saved in the checkpoint; ``extra``: live tensors saved
      with it and copied back in place on a resume; ``key``: a checkpoint with another key is ignored.
    * ``mark_done``: the last checkpoint marks the stage done and a rerun only reloads its weights.
    * ``bar_total``: None counts steps on the bar; a number shows progress in parts of it instead.
    """

    name: str
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    start: Callable
    schedule: Schedule
    seconds: float
    checkpoint: str | Path | None = None
    max_steps: float = math.inf
    total: str = "open"
    watch: Callable | None = None
    finish: Callable | None = None
    state: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    best: Best | None = None
    key: dict = field(default_factory=dict)
    resume: bool = True
    mark_done: bool = False
    every: float = 60.0
    desc: str | None = None
    unit: str = "step"
    bar_total: int | None = None

    def __post_init__(self):
        if self.total not in TOTALS:
            raise ValueError(f"Stage total must be one of {', '.join(TOTALS)}; got {self.total!r}")


def train_stage(stage: Stage) -> dict:
    """Train ``stage.model`` until its time is up or ``max_steps`` are done; returns the stage's state
    (``step``, ``elapsed`` seconds, ``done``, ``best_val`` with a ``Best``, and the recipe's own keys).

    The learning rate follows the schedule by progress: steps or time, whichever is further.
    """
    # 1. Fresh state, or the checkpoint's; the stage's clock continues the time already spent.
    state = _resume(stage)
    clock = _stage_clock(stage, state)
    step_fn = stage.start(state["step"])
    total = stage.bar_total or (None if math.isinf(stage.max_steps) else stage.max_steps)
    bar = progress_bar(stage.desc or stage.name, total=total, unit=stage.unit,
                       initial=0 if stage.bar_total else state["step"])
    last_save = time.time()
    stage.model.train()
    while not state["done"] and clock.running() and state["step"] < stage.max_steps:
        # 2. Progress -> learning rate.
        progress = min(1.0, max(state["step"] / stage.max_steps, clock.progress()))
        set_lr(stage.opt, stage.schedule(progress, state["step"]))
        # 3. One step: the recipe's loss, backward, clip, update.
        loss, aux = step_fn(state["step"], progress)
        update(stage.model, stage.opt, loss)
        state["step"] += 1
        # 4. The recipe's watcher (logging, held-out loss) and the progress bar.
        postfix = stage.watch(state, loss, aux, progress, clock) if stage.watch is not None else None
        _show(bar, stage, progress, postfix)
        # 5. Resumable checkpoint.
        if time.time() - last_save > stage.every:
            state["elapsed"], last_save = clock.elapsed(), time.time()
            _save(stage, state)
    bar.close()
    return _end(stage, state, clock)


def _resume(stage: Stage) -> dict:
    """The stage's state: fresh, or loaded with the weights (and optimizer, extra, best) of its checkpoint."""
    state = {"step": 0, "elapsed": 0.0, "done": False, **stage.state}
    blob = load_checkpoint(stage.checkpoint) if stage.checkpoint is not None and stage.resume else None
    if blob is None:
        return state
    if blob[0].get("key") != stage.key:  # other settings, or written before the stage loop was shared
        print(f"[{stage.name}] {stage.checkpoint} was written by other settings; starting afresh", flush=True)
        return state
    saved, tensors = blob
    stage.model.load_state_dict(tensors["model"])
    for name, t in tensors.get("extra", {}).items():
        stage.extra[name].copy_(t)
    if not saved["done"]:
        stage.opt.load_state_dict(tensors["opt"])
    if stage.best is not None:
        stage.best.load(saved.get("best_val", math.inf), tensors.get("best", {}))
    print(f"[{stage.name}] resumed at step {saved['step']}", flush=True)
    return saved


def _stage_clock(stage: Stage, state: dict) -> StageClock:
    """This run's clock for the stage (see ``Stage.total``); a finished stage's has no time left."""
    now, spent = time.time(), state["elapsed"]
    if state["done"]:
        return StageClock(now, spent, state.get("total"))
    if stage.total == "open":
        return StageClock(now + stage.seconds, spent)
    total = state.setdefault("total", stage.seconds)
    left = min(stage.seconds, total - spent) if stage.total == "capped" else stage.seconds
    return StageClock(now + max(0.0, left), spent, total)


def _show(bar, stage: Stage, progress: float, postfix: dict | None) -> None:
    """The watcher's postfix, then one step (or the progress, with ``bar_total``) on the bar."""
    if postfix:
        bar.set_postfix(postfix, refresh=False)
    if stage.bar_total:
        bar.n = int(progress * stage.bar_total)
        bar.update(0)
    else:
        bar.update(1)


def _save(stage: Stage, state: dict) -> None:
    """Atomic checkpoint: weights, optimizer (not once done), extra tensors, best weights, the state."""
    if stage.checkpoint is None:
        return
    tensors = {"model": stage.model.state_dict(), "extra": dict(stage.extra)}
    if not state["done"]:
        tensors["opt"] = stage.opt.state_dict()
    if stage.best is not None:
        state["best_val"] = stage.best.value
        tensors["best"] = stage.best.weights or {}
    save_checkpoint(stage.checkpoint, {**state, "key": stage.key}, **tensors)


def _end(stage: Stage, state: dict, clock: StageClock) -> dict:
    """The recipe's ``finish``, the last checkpoint (done with ``mark_done``), then the best weights back."""
    if not state["done"]:
        state["elapsed"] = clock.elapsed()
        if stage.finish is not None:
            stage.finish(state, clock)
        state["done"] = stage.mark_done
        _save(stage, state)
    if stage.best is not None:
        state["best_val"] = stage.best.value
        stage.best.restore(stage.model)
    return state


# ------------------------------------------------------------------------------------------ distillation
def kl_loss(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over positions of KL(softmax(teacher) || softmax(student)), in float32.

    ``teacher_logits``, ``student_logits``: ``[..., V]``; ``mask [...]`` (optional): weights of the
    positions (1 = counts, 0 = padding), the mean is taken over the weighted positions.
    """
    t_logp = teacher_logits.float().log_softmax(-1)                      # [..., V]
    s_logp = student_logits.float().log_softmax(-1)                      # [..., V]
    per_position = (t_logp.exp() * (t_logp - s_logp)).sum(-1)           # [...]
    if mask is None:
        return per_position.mean()
    return (per_position * mask).sum() / mask.sum()


# ------------------------------------------------------------------------------------------ model cards
def card_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines: the header, the ``|---|`` rule, one line per row."""
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header),
            *(f"| {' | '.join(str(c) for c in row)} |" for row in rows)]


def card(title: str, intro: list[str], sections: list[tuple[str, list[str]]],
         front_matter: dict | None = None) -> str:
    """A model card (``README.md``): optional YAML front matter, ``# title``, the intro lines, then one
    ``## heading`` per section, each block followed by a blank line."""
    lines = ["---", *(f"{k}: {v}" for k, v in front_matter.items()), "---", ""] if front_matter else []
    lines += [f"# {title}", "", *intro, ""]
    for heading, body in sections:
        lines += card_section(heading, body)
    return "\n".join(lines)


def card_section(heading: str, body: list[str]) -> list[str]:
    """One section of a card: ``## heading``, a blank line, the body, a blank line."""
    return [f"## {heading}", "", *body, ""]


def write_card(folder: str | Path, text: str) -> Path:
    """Write ``text`` (from ``card``) to ``folder/README.md``; returns its path."""
    path = Path(folder) / "README.md"
    path.write_text(text)
    return path
