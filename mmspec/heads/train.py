"""Training self-drafters against a frozen target (Medusa-1 style: the target never changes).

* medusa: head i (0-based) on the state at t distils the target's distribution of the token i + 2 ahead
  of t (its logits at t + 1 + i), by KL(target || head), heads weighted 0.8^i as in Medusa;
* eagle: the layer on ``(state_t, token_{t+1})`` regresses ``state_{t+1}`` (smooth L1) plus 0.1 x the KL of
  the target's next-token distribution to the one its predicted state gives, as in EAGLE.

Teacher logits are the target's output head on the cached states (exactly the target's logits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import training


def medusa_loss(heads, head, hidden: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Loss and head 1's top-1 agreement with the target's greedy token, on ``hidden [b, S, H]``."""
    x = heads(hidden[:, :-1])  # [b, S - 1, M, H]
    loss, agree = hidden.new_zeros(()), None
    for i in range(heads.num_heads):
        S = hidden.shape[1] - 1 - i
        if S <= 0:
            break
        teacher, student = head(hidden[:, 1 + i:]), head(x[:, :S, i])  # [b, S, V] each
        loss = loss + 0.8 ** i * training.kl_loss(teacher, student)
        if i == 0:
            agree = (teacher.argmax(-1) == student.argmax(-1)).all(-1).float().mean()  # whole frames
    return loss, agree


def eagle_loss(layer, head, embed, hidden: Tensor, tokens: Tensor, unroll: bool = True) -> tuple[Tensor, Tensor]:
    """Loss and top-1 agreement of the predicted state's token with the target's greedy token.

    ``tokens [b, S]`` (or ``[b, S, K]`` frames) and ``hidden [b, S, H]``; position t reads (state t, frame t+1)
    and predicts state t + 1. With ``unroll`` a second pass feeds, at a random half of the positions, the
    layer's own (detached) prediction instead of the true state, as drafting does past its first frame
    (a light form of EAGLE-3's training-time test)."""
    emb = embed(tokens[:, 1:])  # [b, S - 1, E]
    goal = hidden[:, 1:]
    teacher = head(goal)
    pred = layer(hidden[:, :-1], emb)  # [b, S - 1, H] ~ hidden[:, 1:]
    student = head(pred)
    loss = F.smooth_l1_loss(pred, goal) + 0.1 * training.kl_loss(teacher, student)
    if unroll and hidden.shape[1] > 2:
        # position t's state replaced by the prediction of it made at t - 1 (pred[:, t - 1])
        mixed = hidden[:, 1:-1].clone()
        swap = torch.rand(mixed.shape[:2], device=mixed.device) < 0.5  # [b, S - 2]
        mixed[swap] = pred[:, :-1].detach()[swap]
        pred2 = layer(torch.cat([hidden[:, :1], mixed], 1), emb)
        loss = loss + F.smooth_l1_loss(pred2, goal) + 0.1 * training.kl_loss(teacher, head(pred2))
    return loss, (teacher.argmax(-1) == student.argmax(-1)).all(-1).float().mean()  # whole frames


def reader(target):
    """The target's frozen output head as ``hidden [..., H] -> logits [..., K, V]`` (one row per codebook),
    read as the drafters read it (``mmspec.drafters.selfdraft.read``)."""
    from functools import partial

    from ..drafters.selfdraft import read

    return partial(read, target.output_head(), K=target.num_codebooks)


def frames_of(tokens: Tensor) -> Tensor:
    """Cached tokens as frames ``[n, S, K]`` (text caches hold ``[n, S]``)."""
    return tokens[..., None] if tokens.dim() == 2 else tokens


def loss_fn(kind: str, module, head, embed):
    if kind.startswith("medusa"):  # medusa, medusa1
        return lambda h, t: medusa_loss(module, head, h, t)
    return lambda h, t: eagle_loss(module, head, embed, h, t)


def fit(kind, module, head, embed, data, seconds: float, ckpt, lr: float, batch: int, device) -> dict:
    """Train ``module`` on cached ``(tokens, hidden)`` for ``seconds`` (resuming from ``ckpt``); returns stats."""
    tokens, hidden = frames_of(data[0]), data[1]
    compute, agree = loss_fn(kind, module, head, embed), [float("nan")]

    def start(step: int):
        g = torch.Generator().manual_seed(step)

        def step_fn(step: int, progress: float):
            rows = torch.randint(0, tokens.shape[0], (batch,), generator=g)
            return compute(hidden[rows].to(device).float(), tokens[rows].to(device))
        return step_fn

    def watch(state: dict, loss: Tensor, acc: Tensor, progress: float, clock) -> dict:
        agree[0] = 0.9 * agree[0] + 0.1 * acc.item() if agree[0] == agree[0] else acc.item()
        return {"loss": f"{loss.item():.3f}", "top1": f"{agree[0]:.3f}"}

    state = training.train_stage(training.Stage(
        f"train {kind}", module, training.adamw(module.parameters(), lr, weight_decay=0.0), start,
        training.Schedule(peak=lr, floor=0.1, warmup=0.05, warmup_start=0.1), seconds, checkpoint=ckpt,
        total="fixed", watch=watch, key={"kind": kind}))
    return {"steps": state["step"], "train_top1": agree[0], "train_seconds": round(state["elapsed"], 1)}


@torch.no_grad()
def agreement(kind, module, head, embed, data, device, batch: int = 8) -> float:
    """Top-1 agreement (head 1 / the EAGLE layer) with the target's greedy token on cached ``data``."""
    tokens, hidden = frames_of(data[0]), data[1]
    compute, hits, n = loss_fn(kind, module, head, embed), 0.0, 0
    for i in range(0, tokens.shape[0], batch):
        _, acc = compute(hidden[i:i + batch].to(device).float(), tokens[i:i + batch].to(device))
        hits, n = hits + float(acc) * min(batch, tokens.shape[0] - i), n + min(batch, tokens.shape[0] - i)
    return hits / max(1, n)
