"""`train`: the text zoo's target, then its drafter (corpus pretraining, then distillation), in one budget.

Every stage runs through ``run_stage`` on the shared stage loop (``mmspec.training.train_stage``): a
wall-clock share, the warmup + cosine schedule, atomic resumable checkpoints in ``OUT/ckpt`` and a
progress bar; this module keeps the data, the models, the losses and the stages' settings.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from mmspec.training import (Best, Clock, Schedule, Stage, StageClock, adamw, autocast, hardware, kl_loss,
                             setup_device, train_stage)

from .models import DRAFT_DIMS, QUICK_DRAFT_DIMS, QUICK_TARGET_DIMS, TARGET_DIMS, llama_config, save_model


class Batches:
    """Random training windows and fixed validation windows, all token ids resident on the device."""

    def __init__(self, data: Path, batch: int, context: int, device, val_windows: int = 64):
        import torch

        self.batch, self.context, self.device = batch, context, device
        train = np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64)
        val = np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64)
        self.train = torch.from_numpy(train).to(device)                       # [N]
        self.offsets = torch.arange(context + 1, device=device)              # [T + 1]
        # Up to `val_windows` non-overlapping held-out windows, spread evenly over val.bin.
        n = min(val_windows, (len(val) - 1) // (context + 1))
        starts = np.linspace(0, len(val) - context - 1, n).astype(np.int64)
        self.val = torch.from_numpy(np.stack([val[s:s + context + 1] for s in starts])).to(device)

    def sample(self, gen):
        """One batch of random windows: inputs and next-token labels, each [B, T]."""
        import torch

        starts = torch.randint(0, len(self.train) - self.context - 1, (self.batch,), generator=gen,
                               device=self.device)                            # [B], no host sync
        win = self.train[starts[:, None] + self.offsets]                      # [B, T + 1]
        return win[:, :-1], win[:, 1:]


def ce_loss(model, x, y):
    """Next-token cross-entropy in nats/token; x, y: [B, T]."""
    import torch.nn.functional as F

    logits = model(input_ids=x, use_cache=False).logits                      # [B, T, V]
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def distill_loss(teacher):
    """Distillation loss KL(target || draft) per token, against a frozen teacher's full distribution."""
    import torch

    def loss(model, x, y):
        with torch.no_grad():
            t_logits = teacher(input_ids=x, use_cache=False).logits          # [B, T, V]
        return kl_loss(t_logits, model(input_ids=x, use_cache=False).logits)
    return loss


def make_optimizer(model, lr: float, device):
    """AdamW, weight decay on matrices only (not norms), fused kernels on CUDA."""
    import torch

    return adamw(model.parameters(), lr, betas=(0.9, 0.95), weight_decay=0.1, matrices_only=True,
                 fused=torch.device(device).type == "cuda")


class Run:
    """What every stage shares: device, batches, autocast, checkpoint folder, flags."""

    def __init__(self, args, device, batches: Batches, ckpt_dir: Path):
        self.device, self.batches, self.ckpt_dir = device, batches, ckpt_dir
        self.resume, self.seed, self.compile = not args.no_resume, args.seed, args.compile
        self.ckpt_every_s = 60.0
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    def autocast(self):
        """bf16 autocast on CUDA; plain fp32 on CPU."""
        return autocast(self.device)

    def val_loss(self, model, loss_fn) -> float:
        """Mean of loss_fn over the fixed held-out windows (model put back in train mode after)."""
        import torch

        model.eval()
        vals, B = [], max(self.batches.batch, 8)
        with torch.no_grad(), self.autocast():
            for i in range(0, len(self.batches.val), B):
                win = self.batches.val[i:i + B]                               # [b, T + 1]
                vals.append(loss_fn(model, win[:, :-1], win[:, 1:]) * len(win))
        model.train()
        return float(torch.stack(vals).sum()) / len(self.batches.val)


class Watch:
    """A text stage's bookkeeping after each step: tokens, a loss-curve row every ``log_every`` steps, and
    the held-out loss every ``1 / evals`` of the stage (when it fits before the deadline) into ``best``."""

    def __init__(self, run: Run, model, loss_fn, best: Best, schedule: Schedule, log_every: int, evals: int):
        self.run, self.model, self.loss_fn, self.best, self.schedule = run, model, loss_fn, best, schedule
        self.log_every, self.evals = log_every, evals
        self.next_eval, self.eval_seconds = 1 / evals, 0.0

    def __call__(self, state: dict, loss, tokens: int, progress: float, clock: StageClock) -> dict | None:
        state["tokens"] += tokens
        postfix = None
        if state["step"] % self.log_every == 0 or state["step"] == 1:  # one host sync every few steps
            value = loss.item()
            state["curve"].append([state["step"], state["tokens"], round(value, 4), round(clock.elapsed(), 1),
                                   self.schedule(progress)])
            postfix = {"loss": f"{value:.3f}", "step": state["step"]}
        if progress >= self.next_eval and time.time() + self.eval_seconds < clock.deadline:
            t_eval = time.time()
            self.evaluate(state)
            self.next_eval, self.eval_seconds = self.next_eval + 1 / self.evals, time.time() - t_eval
        return postfix

    def evaluate(self, state: dict, clock: StageClock | None = None) -> None:
        """Held-out loss now, into the validation curve; the weights are kept when they are the best."""
        val = self.run.val_loss(self.model, self.loss_fn)
        state["val"].append([state["step"], state["tokens"], round(val, 4)])
        self.best.offer(val, self.model)


def run_stage(run: Run, name: str, model, loss_fn, *, seconds: float, max_steps: float, lr: float,
              log_every: int = 10, evals: int = 10) -> dict:
    """Train `model` on `loss_fn` until its time share or step cap is used up; keep the best weights.

    Progress (for the LR schedule) is max(step / max_steps, elapsed / seconds), so the schedule fits
    a wall-clock budget without knowing the throughput in advance. Resumes from OUT/ckpt/<name>.pt; a
    finished stage only reloads its weights. The best held-out weights (an fp16 copy) are restored.
    """
    import torch

    fwd = torch.compile(model) if run.compile else model
    schedule, best = Schedule(lr, warmup=0.03, warmup_min=0.02), Best(dtype=torch.float16)
    watch = Watch(run, model, loss_fn, best, schedule, log_every, evals)

    def start(step: int):
        gen = torch.Generator(device=run.device).manual_seed(run.seed * 7919 + step + len(name))

        def step_fn(step: int, progress: float):
            x, y = run.batches.sample(gen)                                    # [B, T]
            with run.autocast():
                return loss_fn(fwd, x, y), x.numel()
        return step_fn

    state = train_stage(Stage(
        name, model, make_optimizer(model, lr, run.device), start, schedule, seconds,
        checkpoint=run.ckpt_dir / f"{name}.pt", max_steps=max_steps, total="capped", watch=watch,
        finish=watch.evaluate, state={"tokens": 0, "curve": [], "val": []}, best=best, resume=run.resume,
        mark_done=True, every=run.ckpt_every_s, unit="it", bar_total=1000))
    print(f"[{name}] {state['step']} steps, {state['tokens']:,} tokens, {state['elapsed']:.0f}s, "
          f"best held-out {state['best_val']:.4f}", flush=True)
    return state


def _device(args) -> str:
    """The run's device (``--device``) as "cuda" or "cpu", with the seed set and TF32 matrix products on CUDA."""
    return setup_device(args.device, seed=args.seed).type


def _run(args, device, data: Path, ckpt_dir: Path) -> tuple[Run, int, int]:
    """Batches and the shared run state for ``--quick`` or full sizes; returns ``(run, batch, context)``."""
    context = args.context if not args.quick else min(args.context, 64)
    batch = args.batch_size or (4 if args.quick else 64 if device == "cuda" else 8)
    batches = Batches(data, batch, context, device, val_windows=64 if device == "cuda" else 8)
    return Run(args, device, batches, ckpt_dir), batch, context


def drop_checkpoints(run: Run, stages: dict, keep: bool) -> None:
    """Delete the stage checkpoints once every stage is done (they are big and only needed to resume)."""
    if all(s["done"] for s in stages.values()) and not keep:
        for p in run.ckpt_dir.glob("*.pt"):
            p.unlink()
        run.ckpt_dir.rmdir()


def train(args) -> dict:
    """Target stage, then drafter pretraining and distillation, all inside --time-budget seconds."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    clock = Clock(args.time_budget, reserve=min(15.0, 0.05 * args.time_budget))  # keep time to save
    # 1. Device, data, tokenizer, sizes.
    device = _device(args)
    data, out = Path(args.data), Path(args.out)
    meta = json.loads((data / "meta.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    run, batch, context = _run(args, device, data, out / "ckpt")
    max_steps = 20 if args.quick else math.inf
    # 2. Target: pretrain on the corpus.
    t_dims, d_dims = (QUICK_TARGET_DIMS, QUICK_DRAFT_DIMS) if args.quick else (TARGET_DIMS, DRAFT_DIMS)
    target = LlamaForCausalLM(llama_config(t_dims, meta)).to(device)
    stages = {"target": run_stage(run, "target", target, ce_loss, max_steps=max_steps, lr=1.5e-3,
                                  seconds=args.target_frac * clock.left())}
    save_model(target, tokenizer, out / "code-target")
    # 3. Drafter: pretrain on the corpus (about a third of what is left), then distill on the target.
    draft = LlamaForCausalLM(llama_config(d_dims, meta)).to(device)
    stages["draft"] = run_stage(run, "draft", draft, ce_loss, max_steps=max_steps / 2, lr=3e-3,
                                seconds=0.35 * clock.left())
    target.eval().requires_grad_(False)
    stages["distill"] = run_stage(run, "distill", draft, distill_loss(target), max_steps=max_steps / 2,
                                  lr=1.5e-3, seconds=clock.left())
    stages["distill"]["val_ce"] = run.val_loss(draft, ce_loss)
    save_model(draft, tokenizer, out / "code-draft")
    # 4. Log; drop checkpoints once everything is saved.
    log = train_log(args, device, meta, target, draft, stages, batch, context, clock.elapsed())
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    drop_checkpoints(run, stages, args.keep_ckpt)
    print(f"[train] done in {log['wall_seconds']:.0f}s -> {out}", flush=True)
    return log


def train_log(args, device, meta, target, draft, stages, batch, context, wall) -> dict:
    """What the model cards cite: hardware, tokens seen, wall time, sampled loss curves."""
    import torch
    import transformers

    def sampled(rows, n=200):
        step = max(1, len(rows) // n)
        return rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])

    return {
        "hardware": hardware(device), "device": device, "torch": torch.__version__,
        "transformers": transformers.__version__, "time_budget": args.time_budget,
        "wall_seconds": round(wall, 1), "quick": args.quick, "batch": batch, "context": context,
        "compile": args.compile, "corpus_train_tokens": meta["n_train_tokens"],
        "params": {"target": sum(p.numel() for p in target.parameters()),
                   "draft": sum(p.numel() for p in draft.parameters())},
        "stages": {name: {"steps": s["step"], "tokens": s["tokens"], "seconds": round(s["elapsed"], 1),
                          "tokens_per_s": round(s["tokens"] / max(s["elapsed"], 1e-9)),
                          "best_val": s["best_val"], "done": s["done"], "val_ce": s.get("val_ce"),
                          "val_curve": s["val"], "loss_curve": sampled(s["curve"])}
                   for name, s in stages.items()},
        "columns": {"loss_curve": ["step", "tokens", "loss", "seconds", "lr"],
                    "val_curve": ["step", "tokens", "loss"]},
    }

