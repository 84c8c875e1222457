"""``mmspec heads train``: train Medusa heads or an EAGLE layer for a frozen target of any modality.

    mmspec heads train --target zoo:code-target --kind eagle --out runs/code-heads --time-budget 3600
    mmspec heads train --target zoo:speech --kind medusa --out runs/speech-heads

Stages: (1) cache the target's hidden states (resumable shards in OUT/cache): a text target's on a corpus,
an image or speech target's on its own samples at temperature 1 (its exact distribution), (2) train
inside the rest of the budget (resumable OUT/checkpoint.pt), (3) measure top-1 agreement on held-out data,
(4) write OUT/model.safetensors (fp16) + OUT/config.json (``mmspec.heads.load_heads``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from .. import training

LR = {"medusa": 1e-3, "eagle": 3e-4, "medusa1": 1e-3, "eagle1": 3e-4}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmspec heads train", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="the target: zoo:NAME, a local folder or a hub id (text)")
    p.add_argument("--modality", default="auto", help="the target's modality (default: the first that loads it)")
    p.add_argument("--kind", required=True, choices=["medusa", "eagle", "medusa1", "eagle1"],
                   help="eagle1/medusa1: the layouts vLLM and SGLang load (`mmspec heads export`)")
    p.add_argument("--out", required=True, help="folder for the heads (and the cache and checkpoint)")
    p.add_argument("--data", default=None, help="text: a text file or a prepared data folder (default: the "
                   "zoo's prepared corpus if present, else the standard library's non-held-out sources); other "
                   "modalities sample their training data from the target")
    p.add_argument("--time-budget", type=float, default=600.0, help="seconds for the whole run (default 600)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-heads", type=int, default=3, help="medusa heads (default 3)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training window (default 128)")
    p.add_argument("--batch", type=int, default=4, help="windows per optimizer step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 medusa, 3e-4 eagle)")
    p.add_argument("--max-tokens", type=int, default=4_000_000, help="training tokens to cache at most (default 4M)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="image/speech: sample the training data at this temperature (0: the target's greedy outputs, "
                        "for heads that serve greedy decoding; default 1)")
    p.add_argument("--init", default=None, metavar="DIR", help="start from these heads (same kind and target): fine-tuning")
    p.add_argument("--draft-vocab", type=int, default=0, metavar="N",
                   help="draft only the N most frequent training ids (EAGLE-3's reduced vocabulary; default 0: all; "
                        "on the text zoo 2048 ids cost more acceptance than their cheaper head read saved)")
    p.add_argument("--seed", type=int, default=0)
    return p


def load_target(args, device):
    """``(modality, target)``: the named modality's, or (auto) the first registered modality that loads it."""
    from ..modalities import get, names

    tried = names() if args.modality == "auto" else [args.modality]
    errors = []
    for name in tried:
        modality = get(name)
        try:
            return modality, modality.load(args.target, device=str(device), dtype="float32")
        except ValueError as err:
            errors.append(f"{name}: {err}")
    raise ValueError(f"could not load --target {args.target!r}: " + "; ".join(errors))


def build_module(args, target):
    """Fresh heads of ``--kind`` sized after the target (an EAGLE layer: its attention heads too)."""
    from .engine_kinds import Eagle1Layer, Medusa1Heads
    from .modules import EagleLayer, MedusaHeads, eagle_for

    H = target.output_head().hidden_size
    if args.kind in ("medusa", "medusa1"):
        return (MedusaHeads if args.kind == "medusa" else Medusa1Heads)(H, args.num_heads)
    return eagle_for(H, target.input_embeddings().embed_size, target.attention_heads, window=args.seq_len,
                     layer_class=EagleLayer if args.kind == "eagle" else Eagle1Layer)


def start_from(args, module, target, device):
    """The weights of ``--init`` (heads of the same kind, trained for this target) in ``module``."""
    from safetensors.torch import load_file

    from .store import check_target, read_heads_config, resolve_heads

    config = read_heads_config(args.init)
    check_target(config, target, args.init)
    if config["kind"] != args.kind:
        raise ValueError(f"--init {args.init!r} holds {config['kind']} heads, not {args.kind}")
    module.load_state_dict({k: v.float() for k, v in load_file(str(resolve_heads(args.init) / "model.safetensors")).items()})
    return module.to(device)


def cache(args, modality, target, info, clock, held_out: bool = False):
    """Stage 1 (and 3's data): ``(what the data is, the cached hidden states of the training (held-out)
    windows or None)``."""
    from . import data

    folder = Path(args.out) / ("cache_val" if held_out else "cache")
    deadline = time.time() + (eval_seconds(args) if held_out else clock.seconds("cache"))
    bar = training.progress_bar(f"cache {'held-out' if held_out else 'train'} states", unit="window")
    limit = 200_000 if held_out else args.max_tokens
    if modality.heads_corpus is not None:  # a corpus, read by the target
        what, examples = modality.heads_corpus(target, args.data, held_out, limit, args.seq_len)
        key = {"fingerprint": info["fingerprint"], "data": what, "seq_len": args.seq_len, "states": "target.hidden"}
        shards = data.cache_corpus(target, examples, folder, key, deadline, bar=bar)
    elif modality.heads_prompts is not None:  # the target's own samples
        what = (f"{modality.name} target samples at temperature {args.temperature:g} "
                f"({'held-out' if held_out else 'training'} prompts)")
        key = {"fingerprint": info["fingerprint"], "data": what, "seq_len": args.seq_len, "seed": args.seed}

        def make(done: int):
            prompts = itertools.islice(modality.heads_prompts(target, held_out), max(1, limit // args.seq_len))
            seed = args.seed + (10**6 if held_out else 0) + 1000 * done
            return data.sampled_windows(target, prompts, args.seq_len, args.batch * 4, seed,
                                        modality.length(None, target), args.temperature)
        shards = data.cache_sampled(make, folder, key, deadline, bar=bar)
    else:
        raise ValueError(f"the {modality.name} modality names no training data for self-drafters "
                         "(Modality.heads_corpus or heads_prompts)")
    bar.close()
    print(f"[heads] {what}: {shards} shards in {folder}", flush=True)
    return what, (data.load_shards(folder) if shards else None)


def eval_seconds(args) -> float:
    """Seconds kept from the training stage to cache the held-out states (stage 3)."""
    return min(45.0, 0.1 * args.time_budget)


def main(argv=None) -> int:
    import torch

    from .store import draft_vocab, save_heads, target_info
    from .train import agreement, fit, reader

    args = build_parser().parse_args(argv)
    device = training.setup_device(args.device, seed=args.seed)
    modality, target = load_target(args, device)
    for p in (*target.output_head().parameters(), *target.input_embeddings().parameters()):
        p.requires_grad_(False)  # the target's modules the losses run through stay frozen: only the heads learn
    info = target_info(target, args.target)
    clock = training.Clock(args.time_budget, reserve=min(30.0, 0.1 * args.time_budget),
                           shares={"cache": 1.0, "train": 2.0})
    module = build_module(args, target).to(device)
    if args.init:
        module = start_from(args, module, target, device)
    head, embed = reader(target), target.input_embeddings()
    what, train_data = cache(args, modality, target, info, clock)
    if train_data is None:
        raise ValueError("no training windows were cached: the data is shorter than one --seq-len window, "
                         "or --time-budget is too short to cache one shard")
    stats = fit(args.kind, module, head, embed, train_data, max(1.0, clock.seconds("train", ["train"]) - eval_seconds(args)),
                Path(args.out) / "checkpoint.pt", args.lr or LR[args.kind], args.batch, device)
    val = cache(args, modality, target, info, clock, held_out=True)[1]
    if val is not None:
        stats["held_out_top1"] = round(agreement(args.kind, module.eval(), head, embed, val, device), 4)
    stats.update(hardware=training.hardware(device), seq_len=args.seq_len, windows=int(train_data[0].shape[0]),
                 data=(args.data or "default corpus") if modality.heads_corpus is not None else modality.name,
                 data_description=what, init=args.init)
    vocab = draft_vocab(train_data[0], target.vocab_size, args.draft_vocab) if target.num_codebooks == 1 else []
    if vocab and val is not None:
        stats["draft_vocab_coverage"] = round(float(torch.isin(val[0], torch.tensor(vocab)).float().mean()), 4)
    save_heads(module, args.out, info, {"training": stats, "draft_vocab": vocab})
    print(f"[heads] saved {args.kind} to {args.out}: {json.dumps(stats)}", flush=True)
    return 0


# -- `mmspec heads export`: the engines' checkpoint layouts (mmspec.heads.export) ------------------------
def export_main(argv=None) -> int:
    """``mmspec heads export DIR --format vllm|sglang|eagle3|medusa --out OUT``; exit code 2 on bad input."""
    import sys

    from .export import DTYPES, FORMATS, export

    p = argparse.ArgumentParser(prog="mmspec heads export", description="write trained heads as a checkpoint that "
                                "vLLM / SGLang load (config.json, model.safetensors, README.md with the serve lines)")
    p.add_argument("heads", metavar="DIR", help="heads folder from `mmspec heads train` (--kind eagle1 or medusa1), "
                   "or zoo:NAME")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="folder for the exported checkpoint")
    p.add_argument("--dtype", default="float16", choices=list(DTYPES))
    p.add_argument("--target", default=None, help="the target's folder or hub id (default: the heads' own)")
    args = p.parse_args(argv)
    try:
        out = export(args.heads, args.format, args.out, args.dtype, args.target)
    except ValueError as err:
        print(f"mmspec heads export: error: {err}", file=sys.stderr)
        return 2
    print(f"[heads] exported {args.heads} as {args.format} into {out}; serve it as {out / 'README.md'} says")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
