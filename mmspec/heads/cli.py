"""``mmspec heads train``: train Medusa heads or an EAGLE layer for a frozen text target.

    mmspec heads train --target zoo:code-target --kind medusa --out runs/medusa --time-budget 420

Stages: (1) cache the target's hidden states on the training corpus (resumable shards in OUT/cache),
(2) train inside the rest of the budget (resumable OUT/checkpoint.pt), (3) measure top-1 agreement on
held-out text, (4) write OUT/model.safetensors (fp16) + OUT/config.json (``mmspec.heads.load_heads``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import training

LR = {"medusa": 1e-3, "eagle": 3e-4}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmspec heads train", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="text target: zoo:NAME, a local folder or a hub id")
    p.add_argument("--kind", required=True, choices=["medusa", "eagle"])
    p.add_argument("--out", required=True, help="folder for the heads (and the cache and checkpoint)")
    p.add_argument("--data", default=None, help="a text file or a prepared data folder (default: the zoo's "
                   "prepared corpus if present, else the standard library's non-held-out sources)")
    p.add_argument("--time-budget", type=float, default=600.0, help="seconds for the whole run (default 600)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-heads", type=int, default=3, help="medusa heads (default 3)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training window (default 128)")
    p.add_argument("--batch", type=int, default=4, help="windows per optimizer step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 medusa, 3e-4 eagle)")
    p.add_argument("--seed", type=int, default=0)
    return p


def build_module(args, target):
    from .modules import MedusaHeads, eagle_for

    H = target.output_head().weight.shape[1]
    if args.kind == "medusa":
        return MedusaHeads(H, args.num_heads)
    E = target.input_embeddings().weight.shape[1]
    return eagle_for(H, E, getattr(target.model.config, "num_attention_heads", None), window=args.seq_len)


def cache(args, target, info, clock, held_out: bool = False):
    """Stage 1 (and 3's data): the cached hidden states of the training (held-out) corpus."""
    from . import data

    what, ids = data.token_stream(target.tokenizer, args.data, held_out, max_tokens=200_000 if held_out else 4_000_000)
    folder = Path(args.out) / ("cache_val" if held_out else "cache")
    key = {"fingerprint": info["fingerprint"], "data": what, "seq_len": args.seq_len}
    deadline = time.time() + (eval_seconds(args) if held_out else clock.seconds("cache"))
    bar = training.progress_bar(f"cache {'held-out' if held_out else 'train'} states", unit="seq")
    shards = data.cache_states(target.model, data.windows(ids, args.seq_len), folder, key, deadline, bar=bar)
    bar.close()
    print(f"[heads] {what}: {shards} shards in {folder}", flush=True)
    return data.load_shards(folder) if shards else None


def eval_seconds(args) -> float:
    """Seconds kept from the training stage to cache the held-out states (stage 3)."""
    return min(45.0, 0.1 * args.time_budget)


def main(argv=None) -> int:
    from mmspec.text import TextTarget

    from .store import save_heads, target_info
    from .train import agreement, fit

    args = build_parser().parse_args(argv)
    device = training.setup_device(args.device, seed=args.seed)
    target = TextTarget.from_pretrained(args.target, device=str(device), dtype="float32")
    target.model.requires_grad_(False)  # frozen: only the heads learn
    info = target_info(target, args.target)
    clock = training.Clock(args.time_budget, reserve=min(30.0, 0.1 * args.time_budget),
                           shares={"cache": 1.0, "train": 2.0})
    module = build_module(args, target).to(device)
    head, embed = target.output_head(), target.input_embeddings()
    train_data = cache(args, target, info, clock)
    stats = fit(args.kind, module, head, embed, train_data, max(1.0, clock.seconds("train", ["train"]) - eval_seconds(args)),
                Path(args.out) / "checkpoint.pt", args.lr or LR[args.kind], args.batch, device)
    val = cache(args, target, info, clock, held_out=True)
    if val is not None:
        stats["held_out_top1"] = round(agreement(args.kind, module.eval(), head, embed, val, device), 4)
    stats.update(hardware=training.hardware(device), seq_len=args.seq_len, windows=int(train_data[0].shape[0]))
    save_heads(module, args.out, info, {"training": stats})
    print(f"[heads] saved {args.kind} to {args.out}: {json.dumps(stats)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
