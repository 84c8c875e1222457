"""`distill`: retrain only the text zoo's drafter against the saved target, keeping the variant that agrees most."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from mmspec.training import Clock

from .models import DRAFT_PARAM_RANGE, llama_config, parse_variants, save_model
from .train import _device, _run, ce_loss, drop_checkpoints, distill_loss, run_stage, train_log


def agreement(target, draft, windows, batch: int = 8) -> float:
    """Greedy agreement: the share of positions where the draft's argmax is the target's (teacher-forced).

    ``windows [n, T + 1]`` token ids (the last column is only a label and is not scored).
    """
    import torch

    agree = total = 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = windows[i:i + batch, :-1]                                               # [b, T]
            t = target(input_ids=x, use_cache=False).logits.argmax(-1)                  # [b, T]
            d = draft(input_ids=x, use_cache=False).logits.argmax(-1)                   # [b, T]
            agree += int((t == d).sum())
            total += t.numel()
    return agree / max(total, 1)


def _check(args, variants: list[dict], meta: dict, data: Path, target_dir: Path):
    """Refuse a bad --pretrain-frac, a missing target, a mismatched data folder or an out-of-range drafter;
    returns the target's tokenizer (and fills each variant's ``params``)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    if not 0.0 <= args.pretrain_frac < 1.0:
        raise ValueError(f"--pretrain-frac must be in [0, 1), got {args.pretrain_frac}")
    if not (target_dir / "config.json").exists():
        raise ValueError(f"no trained target in {target_dir}: `distill` trains a drafter for an existing "
                         "code-target (run `train` first, or pass --out with a zoo folder, e.g. text/zoo in a checkout)")
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    if len(tokenizer) != meta["vocab_size"]:
        raise ValueError(f"{target_dir} has a {len(tokenizer)}-token vocabulary but {data} was prepared with "
                         f"{meta['vocab_size']}: use the data folder the target was trained on")
    for v in variants:
        with torch.device("meta"):
            v["params"] = sum(p.numel() for p in LlamaForCausalLM(llama_config(v["dims"], meta)).parameters())
        lo, hi = DRAFT_PARAM_RANGE
        if not args.quick and not lo <= v["params"] <= hi:
            raise ValueError(f"drafter variant {v['name']} has {v['params'] / 1e6:.2f}M parameters; the zoo "
                             f"drafter must have {lo / 1e6:.1f}-{hi / 1e6:.1f}M so it stays cheap next to "
                             "the target")
    return tokenizer


def _old_agreement(target, out: Path, val, device):
    """Agreement of the drafter already in ``OUT/code-draft`` (the one to beat), or None."""
    import torch
    from transformers import LlamaForCausalLM

    if not (out / "code-draft" / "config.json").exists():
        return None
    old = LlamaForCausalLM.from_pretrained(str(out / "code-draft"), dtype=torch.float32).to(device).eval()
    score = round(agreement(target, old, val), 4)
    print(f"[distill] drafter in {out / 'code-draft'}: agreement {score:.4f}", flush=True)
    return score


def _train_variant(args, run, v: dict, meta: dict, target, seconds: float, max_steps: float):
    """Pretrain (``--pretrain-frac`` of ``seconds``) and distill one variant; returns (row, draft, stages)."""
    import torch
    from transformers import LlamaForCausalLM

    variant_deadline = time.time() + seconds
    torch.manual_seed(args.seed)
    draft = LlamaForCausalLM(llama_config(v["dims"], meta)).to(run.device)
    stages = {}
    if args.pretrain_frac > 0:
        stages["draft"] = run_stage(run, f"draft-{v['name']}", draft, ce_loss, max_steps=max_steps, lr=3e-3,
                                    seconds=args.pretrain_frac * (variant_deadline - time.time()))
    stages["distill"] = run_stage(run, f"distill-{v['name']}", draft, distill_loss(target), max_steps=max_steps,
                                  lr=1.5e-3 if args.pretrain_frac > 0 else 3e-3,
                                  seconds=variant_deadline - time.time())
    draft.eval()
    stages["distill"]["val_ce"] = run.val_loss(draft, ce_loss)
    agree = agreement(target, draft, run.batches.val)
    row = {"variant": v["name"], "params": v["params"], "agreement": round(agree, 4),
           "val_ce": round(stages["distill"]["val_ce"], 4), "val_kl": round(stages["distill"]["best_val"], 4),
           "tokens": sum(s["tokens"] for s in stages.values()),
           "seconds": round(sum(s["elapsed"] for s in stages.values()), 1)}
    print(f"[distill] {v['name']}: {v['params'] / 1e6:.2f}M, agreement {row['agreement']:.4f}, "
          f"held-out CE {row['val_ce']:.3f}, {row['tokens']:,} tokens", flush=True)
    return row, draft, stages


def distill(args) -> dict:
    """Retrain only the drafter against the saved target and keep the variant that agrees with it most.

    Each variant in ``--variants`` gets an equal share of the budget: corpus pretraining
    (``--pretrain-frac`` of its share), then distillation on the target's full next-token distribution.
    The variant with the highest greedy agreement on the run's held-out windows replaces
    ``OUT/code-draft`` if it agrees more than the drafter already there; every variant's numbers go to
    ``train_log.json`` (``draft_run``, or ``draft_run_not_kept`` when the old drafter stays). The target
    is not touched.
    """
    import torch
    from transformers import LlamaForCausalLM

    clock = Clock(args.time_budget, reserve=min(15.0, 0.05 * args.time_budget))  # keep time to save
    # 1. Variants, device, data, the saved target.
    variants = parse_variants(args.variants)
    data, out = Path(args.data), Path(args.out)
    meta = json.loads((data / "meta.json").read_text())
    tokenizer = _check(args, variants, meta, data, out / "code-target")
    device = _device(args)
    run, batch, context = _run(args, device, data, out / "ckpt-distill")
    target = LlamaForCausalLM.from_pretrained(str(out / "code-target"), dtype=torch.float32).to(device)
    target.eval().requires_grad_(False)
    max_steps = 10 if args.quick else math.inf
    # 2. The drafter already there (if any) is the one to beat.
    old_agreement = _old_agreement(target, out, run.batches.val, device)
    # 3. Each variant: pretrain, distill, score; keep the best.
    rows, best = [], None
    for i, v in enumerate(variants):
        row, draft, stages = _train_variant(args, run, v, meta, target, clock.left() / (len(variants) - i), max_steps)
        rows.append(row)
        if best is None or row["agreement"] > best[0]["agreement"]:
            best = (row, draft, stages)
    # 4. Save the winner if it beats the old drafter; log every variant; drop the checkpoints.
    row, draft, stages = best
    kept = old_agreement is None or row["agreement"] > old_agreement
    sub = train_log(args, device, meta, target, draft, stages, batch, context, clock.elapsed())
    if kept:
        save_model(draft, tokenizer, out / "code-draft")
    log = _write_log(out, args, sub, rows, row, kept, old_agreement, len(run.batches.val), context)
    drop_checkpoints(run, stages, args.keep_ckpt)
    verdict = (f"kept {row['variant']} (agreement {row['agreement']:.4f})" if kept else
               f"kept the previous drafter ({old_agreement:.4f} >= {row['variant']}'s {row['agreement']:.4f})")
    print(f"[distill] {verdict} in {clock.elapsed():.0f}s -> {out / 'code-draft'}", flush=True)
    return log


def _write_log(out: Path, args, sub: dict, rows: list, row: dict, kept: bool, old_agreement, n_val: int,
               context: int) -> dict:
    """Merge this run into ``train_log.json``: ``draft_run`` when kept, else ``draft_run_not_kept``."""
    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    summary = {**{k: sub[k] for k in ("hardware", "device", "torch", "transformers", "time_budget",
                                      "wall_seconds", "quick", "batch", "context")},
               "pretrain_frac": args.pretrain_frac, "variants": rows, "previous_agreement": old_agreement,
               "chosen": row["variant"] if kept else "previous",
               "chosen_by": f"greedy agreement on {n_val} held-out windows of {context}"}
    if kept:
        log.setdefault("stages", {}).pop("draft", None)
        log["stages"].update(sub["stages"])
        log.setdefault("params", {})["draft"] = sub["params"]["draft"]
        log.setdefault("columns", sub["columns"])
        log["draft_run"] = summary
    else:
        log["draft_run_not_kept"] = summary
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    return log
