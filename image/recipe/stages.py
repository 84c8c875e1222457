"""The image zoo's training stages: classifier, VQ tokenizer (with code restarts), AR target and drafter."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmspec.training import kl_loss

from .. import shapes
from ..models import ShapesClassifier, build_vqvae, decode_codes, encode_images
from .loop import Run, maybe_flip, psnr, random_batch, to_pixels, train_loop


def train_classifier(run: Run, x_u8: torch.Tensor, y: torch.Tensor) -> tuple[ShapesClassifier, dict]:
    """Tiny CNN on real images, with flips and pixel noise so VQ artefacts do not fool it."""
    cfg, n = run.cfg, x_u8.shape[0]
    model = ShapesClassifier(shapes.NUM_CLASSES).to(run.device)

    def step_fn(step: int) -> torch.Tensor:
        idx = random_batch(n, cfg["cls_batch"], run.device)
        x = maybe_flip(to_pixels(x_u8[idx]))  # [B, 3, 32, 32]
        x = x + 0.04 * torch.randn_like(x)
        with run.autocast():
            logits = model(x)  # [B, C]
        return F.cross_entropy(logits.float(), y[idx])

    return model, train_loop(run, "classifier", model, step_fn, cfg["cls_steps"], 2e-3)


def train_vqvae(run: Run, x_u8: torch.Tensor):
    """VQModel with MSE + 0.1 L1 reconstruction, codebook + commitment loss, dead-code restarts.

    Quantisation is done here (nearest code, straight-through) with the model's own codebook, then
    ``decode(..., force_not_quantize=True)``: the same maths as ``VQModel.quantize`` at inference,
    but with the restart bookkeeping the stock module lacks.
    """
    cfg, n = run.cfg, x_u8.shape[0]
    vq = build_vqvae(cfg["vq_channels"], cfg["num_codes"], cfg["embed_dim"]).to(run.device)
    book = vq.quantize.embedding.weight  # [N, E]
    usage = torch.zeros(cfg["num_codes"], device=run.device)  # EMA of per-step counts

    def step_fn(step: int) -> torch.Tensor:
        # 1. encode a batch
        x = maybe_flip(to_pixels(x_u8[random_batch(n, cfg["vq_batch"], run.device)]))  # [B, 3, 32, 32]
        with run.autocast():
            z = vq.encode(x).latents
        z = z.float()  # [B, E, h, w]
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)  # [B*h*w, E]
        # 2. codebook init from encoder outputs, then restarts of codes nobody picks
        with torch.no_grad():
            if step == 0:
                book.data.copy_(flat[torch.randint(0, flat.shape[0], (book.shape[0],), device=flat.device)])
            idx = torch.cdist(flat.detach(), book.float()).argmin(1)  # [B*h*w]
            usage.mul_(0.98).add_(0.02 * torch.bincount(idx, minlength=book.shape[0]))
            if step % 100 == 99:
                dead = usage < 0.03 * flat.shape[0] / book.shape[0]
                src = flat[torch.randint(0, flat.shape[0], (book.shape[0],), device=flat.device)]
                book.data[dead] = src[dead] + 0.01 * torch.randn_like(src[dead])
                usage[dead] = flat.shape[0] / book.shape[0]
        # 3. quantise (straight-through) and decode
        zq = F.embedding(idx, book)  # [B*h*w, E]
        vq_loss = F.mse_loss(zq, flat.detach()) + 0.25 * F.mse_loss(flat, zq.detach())
        zq_st = (flat + (zq - flat).detach()).view(b, h, w, e).permute(0, 3, 1, 2)  # [B, E, h, w]
        with run.autocast():
            rec = vq.decode(zq_st, force_not_quantize=True).sample
        rec = rec.float()  # [B, 3, 32, 32]
        return F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + vq_loss

    log = train_loop(run, "vqvae", vq, step_fn, cfg["vq_steps"], cfg["vq_lr"], extra={"usage": usage})
    return vq, log


@torch.no_grad()
def encode_all(vq, x_u8: torch.Tensor, flip: bool, batch: int = 1024) -> torch.Tensor:
    """Codes of every image (and of its mirror image when ``flip``): [N or 2N, h*w] long."""
    chunks = []
    for views in ([False, True] if flip else [False]):
        for i in range(0, x_u8.shape[0], batch):
            x = to_pixels(x_u8[i:i + batch])
            chunks.append(encode_images(vq, x.flip(3) if views else x).flatten(1))  # [b, h*w]
    return torch.cat(chunks)


@torch.no_grad()
def vq_report(vq, classifier, xh_u8: torch.Tensor, yh: torch.Tensor) -> dict:
    """Held-out PSNR, code usage, and classifier accuracy on real vs reconstructed images."""
    x = to_pixels(xh_u8)
    codes = encode_images(vq, x)
    rec = decode_codes(vq, codes)
    num_codes = vq.quantize.embedding.weight.shape[0]
    acc_real = (classifier(x).argmax(-1) == yh).float().mean().item()
    acc_rec = (classifier(rec).argmax(-1) == yh).float().mean().item()
    return {"psnr_db": round(psnr(rec, x), 2),
            "codebook_usage": round(codes.unique().numel() / num_codes, 3),
            "classifier_acc_real": round(acc_real, 4), "classifier_acc_reconstructed": round(acc_rec, 4)}


def train_ar(run: Run, name: str, model, codes: torch.Tensor, labels: torch.Tensor, lr: float,
             steps: int, teacher=None) -> dict:
    """Next-code prediction on [class, codes] with 10% null-class dropout (so CFG works).

    With a ``teacher`` the loss is 0.5 * data CE + 0.5 * KL(teacher || model) on the same inputs,
    which raises the drafter's acceptance rate under the target.
    """
    cfg, n = run.cfg, codes.shape[0]
    num_codes, null_id = cfg["num_codes"], cfg["num_codes"] + shapes.NUM_CLASSES

    def step_fn(step: int) -> torch.Tensor:
        idx = random_batch(n, cfg["ar_batch"], run.device)
        tgt = codes[idx]  # [B, L]
        cls = labels[idx] + num_codes  # [B]
        cls = torch.where(torch.rand(cls.shape, device=cls.device) < 0.1, torch.full_like(cls, null_id), cls)
        inp = torch.cat([cls[:, None], tgt[:, :-1]], dim=1)  # [B, L]
        with run.autocast():
            logits = model(input_ids=inp).logits[..., :num_codes]
        logits = logits.float()  # [B, L, N]
        loss = F.cross_entropy(logits.reshape(-1, num_codes), tgt.reshape(-1))
        if teacher is not None:
            with torch.no_grad(), run.autocast():
                t_logits = teacher(input_ids=inp).logits[..., :num_codes]
            loss = 0.5 * loss + 0.5 * kl_loss(t_logits, logits)
        return loss

    return train_loop(run, name, model, step_fn, steps, lr)


@torch.no_grad()
def heldout_nll(model, codes: torch.Tensor, labels: torch.Tensor, num_codes: int) -> float:
    """Mean per-code negative log-likelihood (nats) of held-out code sequences, class-conditional."""
    inp = torch.cat([labels[:, None] + num_codes, codes[:, :-1]], dim=1)
    logits = model(input_ids=inp).logits[..., :num_codes].float()
    return round(F.cross_entropy(logits.reshape(-1, num_codes), codes.reshape(-1)).item(), 4)
