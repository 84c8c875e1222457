"""`train`: data -> classifier -> VQ tokenizer -> codes -> AR target -> AR drafter, saved as the zoo."""
from __future__ import annotations

import copy
import json
import math
import os
import time

import torch

from mmspec.training import hardware

from .. import shapes
from ..models import FORMAT, META_FILE, build_transformer
from .loop import FULL, HELDOUT_SEED, QUICK, TRAIN_SEED, Run
from .stages import encode_all, heldout_nll, train_ar, train_classifier, train_vqvae, vq_report


def meta_for(cfg: dict, grid: int, vqvae_rel: str, role: str, cfg_scale: float = 3.0) -> dict:
    """Contents of ``mmspec_image.json`` (token layout documented in :mod:`mmspec.image.models`)."""
    n = cfg["num_codes"]
    return {"format": FORMAT, "role": role, "class_names": list(shapes.CLASS_NAMES),
            "image_size": shapes.IMAGE_SIZE, "grid_h": grid, "grid_w": grid, "num_codes": n,
            "code_offset": 0, "class_token_ids": [n + i for i in range(shapes.NUM_CLASSES)],
            "null_token_id": n + shapes.NUM_CLASSES, "vocab_size": n + shapes.NUM_CLASSES + 1,
            "sequence": "[class_token] + codes (raster order)", "pixel_range": [-1, 1],
            "default_cfg_scale": cfg_scale, "vqvae": vqvae_rel}


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
    autocast = " (bf16 autocast)" if dev.type == "cuda" else ""
    run.log["hardware"] = f"{hardware(dev)}{autocast}, torch {torch.__version__}"
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
