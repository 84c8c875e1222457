"""`evaluate`: the image zoo's VQ and classifier scores, a guidance sweep sampled through mmspec's own loop,
the drafter's acceptance rate, sample sheets and model cards (CPU)."""
from __future__ import annotations

import json
import os

import torch

from mmspec.training import hardware

from .. import shapes
from ..models import META_FILE, decode_codes, encode_images, guided_logits, load_zoo, to_uint8
from .card import write_cards
from .loop import HELDOUT_SEED, psnr, to_pixels


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


def eval_samples(zoo, model, per_class: int, scale: float, seed: int):
    """Sample ``per_class`` images of every class (row r = r-th sample of each class) and score them.

    Sampled by mmspec's own loop through ``ImageTarget`` (guidance inside the adapter), temperature 1.
    """
    from mmspec import Sampling, accept, autoregressive

    from ..target import ImageTarget

    c = len(zoo.class_names)
    target = ImageTarget(model, zoo.vqvae, zoo.meta, guidance_scale=scale)
    length = zoo.meta["grid_h"] * zoo.meta["grid_w"]
    gen = autoregressive(target, list(zoo.meta["class_names"]) * per_class, max_new_tokens=length, seed=seed,
                         sampling=Sampling(temperature=1.0), rule=accept.speculative)
    codes = gen.tokens[..., 0]  # [per_class * C, L]
    h, w = zoo.meta["grid_h"], zoo.meta["grid_w"]
    images = decode_codes(zoo.vqvae, codes.view(-1, h, w))  # [B, 3, 32, 32]
    labels = torch.arange(c).repeat(per_class)
    acc = (classify(zoo.classifier, images) == labels).float().mean().item()
    return codes, images, {"cfg_scale": scale, "n": len(labels), "accuracy": round(acc, 4),
                           "sampling_seconds": round(gen.wall_s, 1)}


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
