"""Offline text zoo recipe: a ~23M-parameter Python-code Llama target and a ~2M drafter for it.

    python -m mmspec.text.recipe prepare  [--data .gpu/text]                     # CPU, minutes
    python -m mmspec.text.recipe train    --data .gpu/text --out text/zoo --device cuda --time-budget 400
    python -m mmspec.text.recipe evaluate --data .gpu/text --out text/zoo       # CPU, < 5 min
    python -m mmspec.text.recipe distill  --data .gpu/text --out text/zoo --device cuda --time-budget 330

`prepare` builds the corpus (standard library + a few permissive packages), a byte-level BPE tokenizer
and uint16 token arrays. `train` trains the target, then the drafter (pretraining on the corpus, then
distillation on the target's distribution, which is what raises agreement for speculation), inside one
wall-clock budget, and saves fp16 `save_pretrained` folders `code-target/` and `code-draft/`.
`evaluate` measures losses, greedy agreement and sample completions and writes the model cards.
`distill` retrains only the drafter against the saved target, trying a few drafter shapes, and keeps the
one that agrees with the target most.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from mmspec.bench import hardware

from . import recipe_data as rd

DEFAULT_DATA = ".gpu/text"
DEFAULT_OUT = str(Path(__file__).resolve().parent / "zoo")
MAX_DATA_BYTES = 30_000_000


# ----------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------

def prepare(args, files: list[rd.SourceFile] | None = None) -> dict:
    """Collect the corpus, train the tokenizer, write train.bin / val.bin / meta.json / tokenizer/.

    `files` replaces the corpus collection (tests pass a handful of files).
    """
    t0 = time.time()
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    # 1. Corpus: stdlib, plus capped permissive packages unless disabled.
    packages = {}
    if files is None and args.package_bytes > 0:
        files = rd.stdlib_files()
        extra, packages = rd.package_files(args.package_bytes)
        files += extra
    files = rd.stdlib_files() if files is None else files
    docs = [(f, text) for f in files if (text := rd._usable(f.path)) is not None]
    print(f"[prepare] {len(docs)} usable files of {len(files)}", flush=True)
    # 2. File-level split by path hash.
    train_docs = [(f, t) for f, t in docs if not rd.is_val(f.rel, args.val_permille)]
    val_docs = [(f, t) for f, t in docs if rd.is_val(f.rel, args.val_permille)]
    # 3. Tokenizer on the training files only.
    tokenizer = rd.train_tokenizer([t for _, t in train_docs], args.vocab_size)
    rd.save_tokenizer(tokenizer, data / "tokenizer")
    eot_id = tokenizer.convert_tokens_to_ids(rd.EOT)
    print(f"[prepare] tokenizer trained ({time.time() - t0:.0f}s)", flush=True)
    # 4. Encode; keep training files in hash order up to the token cap (deterministic subsample).
    train_docs, train_ids = _encode_capped(tokenizer, train_docs, args.max_train_tokens, eot_id)
    val_docs, val_ids = _encode_capped(tokenizer, val_docs, args.max_train_tokens // 20, eot_id)
    train_ids.tofile(data / "train.bin")
    val_ids.tofile(data / "val.bin")
    # 5. Meta: counts, file lists with their license source, what produced them.
    meta = _meta(args, tokenizer, eot_id, train_docs, val_docs, train_ids, val_ids, packages)
    meta["prepare_seconds"] = round(time.time() - t0, 1)
    (data / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert size < MAX_DATA_BYTES, f"{data} is {size / 1e6:.1f} MB, over {MAX_DATA_BYTES / 1e6:.0f} MB"
    print(f"[prepare] train {len(train_ids):,} tokens ({len(train_docs)} files), val {len(val_ids):,} "
          f"tokens ({len(val_docs)} files), {size / 1e6:.1f} MB, {meta['prepare_seconds']}s", flush=True)
    return meta


def _encode_capped(tokenizer, docs, max_tokens: int, eot_id: int):
    """Encode documents; keep them in path-hash order while the total stays under max_tokens.

    Returns the kept documents (sorted by path) and their `EOT doc EOT ...` uint16 array.
    """
    # 1. Batch-encode with the Rust tokenizer (parallel, no special tokens added).
    encs = tokenizer.backend_tokenizer.encode_batch([t for _, t in docs], add_special_tokens=False)
    # 2. Deterministic subsample: hash order, skip what does not fit.
    order = sorted(range(len(docs)), key=lambda i: rd.stable_hash(docs[i][0].rel))
    kept, total = [], 0
    for i in order:
        n = len(encs[i].ids) + 1
        if total + n > max_tokens:
            continue
        kept.append(i)
        total += n
    kept.sort(key=lambda i: docs[i][0].rel)
    return [docs[i] for i in kept], rd.join_documents([encs[i].ids for i in kept], eot_id)


def _meta(args, tokenizer, eot_id, train_docs, val_docs, train_ids, val_ids, packages) -> dict:
    """The provenance record written next to the token arrays."""
    def listing(ds):
        return [[f.rel, f.source, f.license] for f, _ in ds]

    return {
        "vocab_size": len(tokenizer), "eot_id": eot_id,
        "pad_id": tokenizer.convert_tokens_to_ids(rd.PAD), "dtype": "uint16",
        "n_train_tokens": int(len(train_ids)), "n_val_tokens": int(len(val_ids)),
        "n_train_files": len(train_docs), "n_val_files": len(val_docs),
        "val_permille": args.val_permille, "split": "sha1(relative path) % 1000 < val_permille",
        "python": platform.python_version(),
        "sources": {"stdlib": {"license": "PSF-2.0", "version": platform.python_version()}, **packages},
        "files": {"train": listing(train_docs), "val": listing(val_docs)},
    }


# ----------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------

TARGET_DIMS = dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=8)      # ~23.2M parameters
DRAFT_DIMS = dict(hidden_size=192, intermediate_size=448, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=4)       # ~2.0M parameters
QUICK_TARGET_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
QUICK_DRAFT_DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2)
# `distill` variants: LAYERSxHIDDENxFFN, 4 heads each. Two or three narrower layers keep the drafter
# inside the 0.5-2M parameters (the 8192 x hidden embedding is most of it) and can copy from
# context (an induction head needs two layers), which code repeats a lot.
DRAFT_VARIANTS = "1x192x448,2x160x416,3x128x448"
DRAFT_PARAM_RANGE = (0.5e6, 2.0e6)


def parse_variants(spec: str, heads: int = 4) -> list[dict]:
    """``"1x192x448,2x160x416"`` -> Llama dims per drafter variant (``heads`` heads of hidden / heads)."""
    variants = []
    for item in [v.strip() for v in spec.split(",") if v.strip()]:
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"drafter variant {item!r}: expected LAYERSxHIDDENxFFN with positive integers, "
                             "for example 2x160x416")
        layers, hidden, ffn = map(int, parts)
        if hidden % heads or (hidden // heads) % 2:
            raise ValueError(f"drafter variant {item!r}: hidden {hidden} must split into {heads} heads of an "
                             "even size (RoPE)")
        variants.append({"name": item.lower(), "dims": dict(
            hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=heads, head_dim=hidden // heads)})
    if not variants:
        raise ValueError("no drafter variants given: pass --variants like 1x192x448,2x160x416")
    if len({v["name"] for v in variants}) != len(variants):
        raise ValueError(f"drafter variants repeat: {spec!r}")
    return variants


def llama_config(dims: dict, meta: dict):
    """A tied-embedding RoPE Llama config sharing the corpus tokenizer's vocabulary and specials."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=meta["vocab_size"], max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=meta["eot_id"], eos_token_id=meta["eot_id"], pad_token_id=meta["pad_id"],
        rms_norm_eps=1e-5, **dims,
    )


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


def kl_loss(teacher):
    """Distillation loss KL(target || draft) per token, against a frozen teacher's full distribution."""
    import torch
    import torch.nn.functional as F

    def loss(model, x, y):
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), -1)  # [B,T,V]
        d_logp = F.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)      # [B,T,V]
        return F.kl_div(d_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True,
                        reduction="batchmean")
    return loss


def lr_at(progress: float, peak: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to floor * peak, as a function of stage progress in [0, 1]."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.02)
    q = min((progress - warmup) / (1 - warmup), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q)))


def make_optimizer(model, lr: float, device):
    """AdamW, weight decay on matrices only (not norms), fused kernels on CUDA."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=(torch.device(device).type == "cuda"))


class Run:
    """What every stage shares: device, batches, autocast, checkpoint folder, flags."""

    def __init__(self, args, device, batches: Batches, ckpt_dir: Path):
        self.device, self.batches, self.ckpt_dir = device, batches, ckpt_dir
        self.resume, self.seed, self.compile = not args.no_resume, args.seed, args.compile
        self.ckpt_every_s = 60.0
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    def autocast(self):
        """bf16 autocast on CUDA; plain fp32 on CPU."""
        import contextlib

        import torch

        if torch.device(self.device).type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

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


def _save_ckpt(path: Path, model, opt, state: dict, best) -> None:
    """Atomic checkpoint: model, optimizer, stage state and the best (fp16) weights so far."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "best": best}, tmp)
    tmp.replace(path)


def _resume(run: Run, name: str, model, opt, state: dict):
    """Load a stage checkpoint if there is one; returns (state, best_weights)."""
    import torch

    path = run.ckpt_dir / f"{name}.pt"
    if not (run.resume and path.exists()):
        return state, None
    blob = torch.load(path, map_location=run.device, weights_only=False)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    print(f"[{name}] resumed at step {blob['state']['step']}", flush=True)
    return blob["state"], blob["best"]


def run_stage(run: Run, name: str, model, loss_fn, *, seconds: float, max_steps: float, lr: float,
              log_every: int = 10, evals: int = 10) -> dict:
    """Train `model` on `loss_fn` until its time share or step cap is used up; keep the best weights.

    Progress (for the LR schedule) is max(step / max_steps, elapsed / seconds), so the schedule fits
    a wall-clock budget without knowing the throughput in advance. Resumes from OUT/ckpt/<name>.pt.
    """
    import torch
    from tqdm.auto import tqdm

    # 1. Optimizer, state, optional resume.
    opt = make_optimizer(model, lr, run.device)
    state = {"step": 0, "tokens": 0, "elapsed": 0.0, "seconds": seconds, "done": False,
             "curve": [], "val": [], "best_val": math.inf}
    state, best = _resume(run, name, model, opt, state)
    path, fwd = run.ckpt_dir / f"{name}.pt", (torch.compile(model) if run.compile else model)
    gen = torch.Generator(device=run.device).manual_seed(run.seed * 7919 + state["step"] + len(name))
    t0 = last_ckpt = time.time()
    left = min(seconds, state["seconds"] - state["elapsed"])
    deadline = t0 + max(0.0, left) if not state["done"] else t0
    bar = tqdm(total=1000, desc=name, mininterval=1.0 if sys.stderr.isatty() else 10.0)
    next_eval, progress, eval_seconds = 1 / evals, 0.0, 0.0
    model.train()
    while time.time() < deadline:
        # 2. Progress -> learning rate.
        elapsed = state["elapsed"] + time.time() - t0
        progress = min(1.0, max(state["step"] / max_steps, elapsed / state["seconds"]))
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, lr)
        # 3. One step: sample, forward under autocast, backward, clip, update.
        x, y = run.batches.sample(gen)                                        # [B, T]
        with run.autocast():
            loss = loss_fn(fwd, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += x.numel()
        # 4. Every few steps: one host sync for logging and the progress bar.
        if state["step"] % log_every == 0 or state["step"] == 1:
            model_loss = loss.item()
            state["curve"].append([state["step"], state["tokens"], round(model_loss, 4),
                                   round(elapsed, 1), lr_at(progress, lr)])
            bar.n = int(progress * 1000)
            bar.set_postfix(loss=f"{model_loss:.3f}", step=state["step"], refresh=False)
            bar.update(0)
        # 5. Held-out loss every 1/evals of the stage, if it fits; keep the best weights.
        if progress >= next_eval and time.time() + eval_seconds < deadline:
            t_eval = time.time()
            best = _evaluate_and_keep(run, name, model, loss_fn, state, best)
            next_eval, eval_seconds = next_eval + 1 / evals, time.time() - t_eval
        # 6. Resumable checkpoint.
        if time.time() - last_ckpt > run.ckpt_every_s:
            state["elapsed"] += time.time() - t0
            t0 = last_ckpt = time.time()
            _save_ckpt(path, model, opt, state, best)
    bar.close()
    # 7. Final held-out loss, restore the best weights, mark done (a rerun skips it), checkpoint.
    if not state["done"]:
        state["elapsed"] += time.time() - t0
        best = _evaluate_and_keep(run, name, model, loss_fn, state, best)
        state["done"] = True
        _save_ckpt(path, model, opt, state, best)
    if best is not None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in best.items()})
    print(f"[{name}] {state['step']} steps, {state['tokens']:,} tokens, {state['elapsed']:.0f}s, "
          f"best held-out {state['best_val']:.4f}", flush=True)
    return state


def _evaluate_and_keep(run: Run, name: str, model, loss_fn, state: dict, best):
    """Held-out loss now; returns the weights to keep (fp16 copy of the best so far)."""
    import torch

    val = run.val_loss(model, loss_fn)
    state["val"].append([state["step"], state["tokens"], round(val, 4)])
    if val < state["best_val"]:
        state["best_val"] = val
        best = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype, copy=True)
                for k, v in model.state_dict().items()}
    return best


def pick_device(name: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _device(args) -> str:
    """The run's device (``--device``), with the seed set and TF32 matrix products on CUDA."""
    import torch

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _run(args, device, data: Path, ckpt_dir: Path) -> tuple[Run, int, int]:
    """Batches and the shared run state for ``--quick`` or full sizes; returns ``(run, batch, context)``."""
    context = args.context if not args.quick else min(args.context, 64)
    batch = args.batch_size or (4 if args.quick else 64 if device == "cuda" else 8)
    batches = Batches(data, batch, context, device, val_windows=64 if device == "cuda" else 8)
    return Run(args, device, batches, ckpt_dir), batch, context


def train(args) -> dict:
    """Target stage, then drafter pretraining and distillation, all inside --time-budget seconds."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    t_start = time.time()
    deadline = t_start + args.time_budget - min(15.0, 0.05 * args.time_budget)  # keep time to save
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
                                  seconds=args.target_frac * (deadline - time.time()))}
    save_model(target, tokenizer, out / "code-target")
    # 3. Drafter: pretrain on the corpus (about a third of what is left), then distill on the target.
    draft = LlamaForCausalLM(llama_config(d_dims, meta)).to(device)
    stages["draft"] = run_stage(run, "draft", draft, ce_loss, max_steps=max_steps / 2, lr=3e-3,
                                seconds=0.35 * (deadline - time.time()))
    target.eval().requires_grad_(False)
    stages["distill"] = run_stage(run, "distill", draft, kl_loss(target), max_steps=max_steps / 2,
                                  lr=1.5e-3, seconds=deadline - time.time())
    stages["distill"]["val_ce"] = run.val_loss(draft, ce_loss)
    save_model(draft, tokenizer, out / "code-draft")
    # 4. Log; drop checkpoints once everything is saved (they are big and only needed to resume).
    log = train_log(args, device, meta, target, draft, stages, batch, context, time.time() - t_start)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    if all(s["done"] for s in stages.values()) and not args.keep_ckpt:
        for p in run.ckpt_dir.glob("*.pt"):
            p.unlink()
        run.ckpt_dir.rmdir()
    print(f"[train] done in {log['wall_seconds']:.0f}s -> {out}", flush=True)
    return log


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
    from transformers import AutoTokenizer, LlamaForCausalLM

    t_start = time.time()
    deadline = t_start + args.time_budget - min(15.0, 0.05 * args.time_budget)  # keep time to save
    # 1. Variants, device, data, the saved target.
    variants = parse_variants(args.variants)
    if not 0.0 <= args.pretrain_frac < 1.0:
        raise ValueError(f"--pretrain-frac must be in [0, 1), got {args.pretrain_frac}")
    device = _device(args)
    data, out = Path(args.data), Path(args.out)
    meta = json.loads((data / "meta.json").read_text())
    target_dir = out / "code-target"
    if not (target_dir / "config.json").exists():
        raise ValueError(f"no trained target in {target_dir}: `distill` trains a drafter for an existing "
                         "code-target (run `train` first, or pass --out with the zoo folder)")
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
                             f"drafter must have {lo / 1e6:.1f}-{hi / 1e6:.1f}M (issue 7)")
    run, batch, context = _run(args, device, data, out / "ckpt-distill")
    val = run.batches.val                                                     # [n, context + 1] held-out windows
    target = LlamaForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).to(device)
    target.eval().requires_grad_(False)
    max_steps = 10 if args.quick else math.inf
    # 2. The drafter already there (if any) is the one to beat.
    old_agreement = None
    if (out / "code-draft" / "config.json").exists():
        old = LlamaForCausalLM.from_pretrained(str(out / "code-draft"), dtype=torch.float32).to(device).eval()
        old_agreement = round(agreement(target, old, val), 4)
        print(f"[distill] drafter in {out / 'code-draft'}: agreement {old_agreement:.4f}", flush=True)
        del old
    # 3. Each variant: pretrain, distill, score; keep the best.
    rows, best = [], None
    for i, v in enumerate(variants):
        variant_deadline = time.time() + (deadline - time.time()) / (len(variants) - i)
        torch.manual_seed(args.seed)
        draft = LlamaForCausalLM(llama_config(v["dims"], meta)).to(device)
        stages = {}
        if args.pretrain_frac > 0:
            stages["draft"] = run_stage(run, f"draft-{v['name']}", draft, ce_loss, max_steps=max_steps, lr=3e-3,
                                        seconds=args.pretrain_frac * (variant_deadline - time.time()))
        stages["distill"] = run_stage(run, f"distill-{v['name']}", draft, kl_loss(target), max_steps=max_steps,
                                      lr=1.5e-3 if args.pretrain_frac > 0 else 3e-3,
                                      seconds=variant_deadline - time.time())
        draft.eval()
        stages["distill"]["val_ce"] = run.val_loss(draft, ce_loss)
        agree = agreement(target, draft, val)
        row = {"variant": v["name"], "params": v["params"], "agreement": round(agree, 4),
               "val_ce": round(stages["distill"]["val_ce"], 4), "val_kl": round(stages["distill"]["best_val"], 4),
               "tokens": sum(s["tokens"] for s in stages.values()),
               "seconds": round(sum(s["elapsed"] for s in stages.values()), 1)}
        rows.append(row)
        print(f"[distill] {v['name']}: {v['params'] / 1e6:.2f}M, agreement {row['agreement']:.4f}, "
              f"held-out CE {row['val_ce']:.3f}, {row['tokens']:,} tokens", flush=True)
        if best is None or row["agreement"] > best[0]["agreement"]:
            best = (row, draft, stages)
    # 4. Save the winner if it beats the old drafter; log every variant; drop the checkpoints.
    row, draft, stages = best
    kept = old_agreement is None or row["agreement"] > old_agreement
    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    sub = train_log(args, device, meta, target, draft, stages, batch, context, time.time() - t_start)
    summary = {**{k: sub[k] for k in ("hardware", "device", "torch", "transformers", "time_budget",
                                      "wall_seconds", "quick", "batch", "context")},
               "pretrain_frac": args.pretrain_frac, "variants": rows, "previous_agreement": old_agreement,
               "chosen": row["variant"] if kept else "previous",
               "chosen_by": f"greedy agreement on {len(val)} held-out windows of {context}"}
    if kept:
        save_model(draft, tokenizer, out / "code-draft")
        log.setdefault("stages", {}).pop("draft", None)
        log["stages"].update(sub["stages"])
        log.setdefault("params", {})["draft"] = sub["params"]["draft"]
        log.setdefault("columns", sub["columns"])
        log["draft_run"] = summary
    else:
        log["draft_run_not_kept"] = summary
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    if all(s["done"] for s in stages.values()) and not args.keep_ckpt:
        for p in run.ckpt_dir.glob("*.pt"):
            p.unlink()
        run.ckpt_dir.rmdir()
    verdict = (f"kept {row['variant']} (agreement {row['agreement']:.4f})" if kept else
               f"kept the previous drafter ({old_agreement:.4f} >= {row['variant']}'s {row['agreement']:.4f})")
    print(f"[distill] {verdict} in {time.time() - t_start:.0f}s -> {out / 'code-draft'}", flush=True)
    return log


def save_model(model, tokenizer, folder: Path) -> None:
    """fp16 safetensors `save_pretrained` folder with generation config and tokenizer files."""
    import copy

    import torch
    from transformers import GenerationConfig

    # 1. fp16 copy on CPU (the training model keeps fp32 weights).
    half = copy.deepcopy(model).to("cpu", dtype=torch.float16)
    cfg = half.config
    half.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                              pad_token_id=cfg.pad_token_id)
    # 2. Save model (safetensors is the default format) and tokenizer next to it.
    half.save_pretrained(str(folder))
    rd.save_tokenizer(tokenizer, folder)


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


# ----------------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------------

# Completion prompts end where an editor's cursor would sit, BEFORE the newline: the tokenizer merges a
# newline with the next line's indentation ("\n    " is one token), so a prompt ending in a bare "\n"
# asks for an unindented next line, which after `def f(n):` the model has rarely seen (it answers with
# file headers). Measured on this zoo: `def fibonacci(n):\n` -> "# Copyright ...", `def fibonacci(n):` ->
# an indented docstring and body.
PROMPTS = [
    "def fibonacci(n):",
    "class Stack:",
    "import os\n\ndef",
    "def is_prime(n):",
    "with open(path) as f:",
    "class Config:\n    def __init__(self",
    "def read_lines(path):",
    "for i in range(10):",
    "if __name__ == \"__main__\":",
    "def add(a, b):",
]
QUALITY_BAR = {"min_loss_gap": 0.3, "min_agreement": 0.6}


def score_heldout(target, draft, val: np.ndarray, unigram_logp: np.ndarray, max_tokens: int,
                  context: int = 512, batch: int = 8) -> dict:
    """Teacher-forced losses (nats/token) and greedy agreement on evenly spread held-out windows."""
    import torch
    import torch.nn.functional as F

    # 1. Windows of context + 1 tokens spread over val.bin, ~max_tokens scored positions in all.
    n = max(1, min(max_tokens // context, (len(val) - 1) // (context + 1)))
    starts = np.linspace(0, len(val) - context - 1, n).astype(np.int64)
    wins = torch.from_numpy(np.stack([val[s:s + context + 1] for s in starts]).astype(np.int64))
    sums = {"target": 0.0, "draft": 0.0, "unigram": 0.0, "agree": 0.0}
    # 2. Score both models on the same positions.
    with torch.no_grad():
        for i in range(0, n, batch):
            win = wins[i:i + batch].to(target.device)
            x, y = win[:, :-1], win[:, 1:]                                            # [b, T]
            t_logits = target(input_ids=x, use_cache=False).logits.float()            # [b, T, V]
            d_logits = draft(input_ids=x, use_cache=False).logits.float()             # [b, T, V]
            sums["target"] += F.cross_entropy(t_logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            sums["draft"] += F.cross_entropy(d_logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            sums["agree"] += (t_logits.argmax(-1) == d_logits.argmax(-1)).sum().item()
            sums["unigram"] -= float(unigram_logp[y.cpu().numpy()].sum())
    # 3. Means per scored token.
    count = n * context
    return {"target_loss": sums["target"] / count, "draft_loss": sums["draft"] / count,
            "unigram_loss": sums["unigram"] / count, "agreement": sums["agree"] / count,
            "scored_tokens": count, "windows": n, "context": context}


def unigram_logp(train: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one smoothed unigram log-probabilities from the training token counts."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def completions(model, tokenizer, eot_id: int, new_tokens: int) -> list[dict]:
    """Greedy continuations of PROMPTS (prefixed with <|endoftext|> as in training) + repetition check."""
    import torch

    rows = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        ids = torch.tensor([ids if ids[:1] == [eot_id] else [eot_id] + ids], device=model.device)  # [1, P], EOT first
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        rows.append({"prompt": prompt, "completion": tokenizer.decode(new), **repetition(new)})
    return rows


def repetition(ids: list[int], n: int = 4) -> dict:
    """Share of repeated token 4-grams; above 0.5 the completion is looping."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    rep = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    return {"repeated_4gram_share": round(rep, 3), "looping": rep > 0.5}


def evaluate(args) -> dict:
    """Score the trained pair on held-out code, sample completions, write eval.json and model cards."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    t0 = time.time()
    data, out = Path(args.data), Path(args.out)
    device = pick_device(args.device)
    meta = json.loads((data / "meta.json").read_text())
    # 1. Load both folders the way users will (fp16 on disk; fp32 on CPU for speed and accuracy).
    dtype = torch.float32 if device == "cpu" else torch.float16
    tokenizer = AutoTokenizer.from_pretrained(str(out / "code-target"))
    target = LlamaForCausalLM.from_pretrained(str(out / "code-target"), dtype=dtype).to(device).eval()
    draft = LlamaForCausalLM.from_pretrained(str(out / "code-draft"), dtype=dtype).to(device).eval()
    # 2. Held-out losses, unigram baseline, agreement.
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    scores = score_heldout(target, draft, val, unigram_logp(train, meta["vocab_size"]), args.max_tokens,
                           context=min(512, len(val) - 1))
    # 3. Greedy samples from both.
    samples = {"target": completions(target, tokenizer, meta["eot_id"], args.new_tokens),
               "draft": completions(draft, tokenizer, meta["eot_id"], args.new_tokens)}
    # 4. Quality bar from the issue.
    bar = {"loss_gap_ok": scores["draft_loss"] - scores["target_loss"] >= QUALITY_BAR["min_loss_gap"],
           "agreement_ok": scores["agreement"] >= QUALITY_BAR["min_agreement"],
           "below_unigram_ok": max(scores["target_loss"], scores["draft_loss"]) < scores["unigram_loss"] - 1}
    log_path = out / "train_log.json"
    train_log_ = json.loads(log_path.read_text()) if log_path.exists() else {}
    result = {"scores": scores, "quality_bar": bar, "samples": samples, "eval_hardware": hardware("cpu"),
              "eval_seconds": round(time.time() - t0, 1)}
    (out / "eval.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    # 5. Model cards.
    for role, model in (("target", target), ("draft", draft)):
        card = model_card(role, model, meta, train_log_, result)
        (out / f"code-{role}" / "README.md").write_text(card)
    print(json.dumps({"scores": scores, "quality_bar": bar, "eval_seconds": result["eval_seconds"]},
                     indent=1), flush=True)
    return result


def model_card(role: str, model, meta: dict, log: dict, result: dict) -> str:
    """README.md for one zoo folder: what it is, how it was trained and scored, corpus and licenses."""
    cfg, s = model.config, result["scores"]
    stages = log.get("stages", {})
    run = log.get("draft_run") if role == "draft" and log.get("draft_run") else log  # who trained this model
    own = ["target"] if role == "target" else ["draft", "distill"]
    tokens = sum(stages.get(k, {}).get("tokens", 0) for k in own)
    seconds = sum(stages.get(k, {}).get("seconds", 0) for k in own)
    other = "code-draft" if role == "target" else "code-target"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0",
        "tags: [mmspec, speculative-decoding, python, code]", "---", "",
        f"# mmspec zoo: code-{role}", "",
        (f"A small Python-code {'target' if role == 'target' else 'drafter'} for speculative decoding "
         f"demos in mmspec; its partner is `{other}` (same tokenizer). Trained offline from scratch on "
         "Python source that ships with Python and a few permissively licensed packages. It completes "
         "code; it is not a general or instruction-following model."), "",
        "## Model", "",
        f"- `LlamaForCausalLM`, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{cfg.num_hidden_layers} layer(s), hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
        f"SwiGLU {cfg.intermediate_size}, RoPE, tied embeddings, fp16 safetensors.",
        f"- Tokenizer: byte-level BPE, vocabulary {meta['vocab_size']}, `<|endoftext|>` (id "
        f"{meta['eot_id']}) is BOS/EOS/document separator, `<|pad|>` (id {meta['pad_id']}) pads. "
        "Round-trips any text exactly. Training documents start after `<|endoftext|>`, and the "
        "tokenizer puts it in front of every prompt.",
        "", "## Training", "",
        f"- Hardware: {run.get('hardware', 'unknown')}; torch {run.get('torch', '?')}, "
        f"transformers {run.get('transformers', '?')}.",
        f"- Tokens seen: {tokens:,} in {seconds:.0f} s (context {run.get('context', '?')}, batch "
        f"{run.get('batch', '?')}, AdamW, cosine LR with warmup, "
        f"{'bf16 autocast' if run.get('device') == 'cuda' else 'fp32'}; whole run "
        f"{run.get('wall_seconds', '?')} s within a {run.get('time_budget', '?')} s budget).",
    ]
    if role == "draft":
        pre = stages.get("draft", {}).get("tokens", 0)
        lines.append(f"- Stages: {f'corpus pretraining ({pre:,} tokens), then ' if pre else ''}distillation on "
                     f"the target's full next-token distribution (KL(target||draft), "
                     f"{stages.get('distill', {}).get('tokens', 0):,} tokens), which raises agreement.")
        if run is not log:
            tried = ", ".join(f"{v['variant']} ({v['params'] / 1e6:.2f}M): {v['agreement']:.3f}"
                              for v in run["variants"])
            lines.append(f"- Trained by `distill` against the finished target; drafter variants "
                         f"(layers x hidden x FFN) and their {run['chosen_by']}: {tried}. Kept: "
                         f"{run['chosen']}.")
    lines += ["", "## Evaluation (held-out files, teacher-forced)", "",
              "| metric | value |", "|---|---|",
              f"| target loss (nats/token) | {s['target_loss']:.3f} |",
              f"| draft loss (nats/token) | {s['draft_loss']:.3f} |",
              f"| unigram baseline loss | {s['unigram_loss']:.3f} |",
              f"| greedy agreement draft vs target | {s['agreement']:.3f} |",
              f"| scored tokens | {s['scored_tokens']:,} ({s['windows']} windows of {s['context']}) |", "",
              "Quality bar (issue 7): " + ", ".join(f"{k} = {v}" for k, v in result["quality_bar"].items())
              + f". Evaluated on {result['eval_hardware']}.", "",
              "## Greedy completions (64 new tokens)", ""]
    for row in result["samples"][role]:
        flag = " (looping)" if row["looping"] else ""
        lines += [f"Prompt `{row['prompt']!r}`{flag}:", "", "```python", row["prompt"] + row["completion"],
                  "```", ""]
    lines += corpus_section(meta) + [
        "## Use", "", "```python", "from transformers import AutoTokenizer, LlamaForCausalLM",
        f"tok = AutoTokenizer.from_pretrained('code-{role}')",
        f"model = LlamaForCausalLM.from_pretrained('code-{role}')", "```", "",
        "## Retrain", "", "```bash", "mmspec zoo train text        # = the three steps below",
        "python -m mmspec.text.recipe prepare --data .gpu/text",
        "python -m mmspec.text.recipe train --data .gpu/text --out text/zoo --device cuda --time-budget 400",
        "python -m mmspec.text.recipe evaluate --data .gpu/text --out text/zoo",
        "# the drafter alone, against the saved target (mmspec zoo distill text):",
        "python -m mmspec.text.recipe distill --data .gpu/text --out text/zoo --device cuda --time-budget 330",
        "```", ""]
    return "\n".join(lines)


def corpus_section(meta: dict) -> list[str]:
    """Corpus provenance: sources with versions and licenses, sizes, the split rule."""
    lines = ["## Corpus", "",
             f"{meta['n_train_files']} training files ({meta['n_train_tokens']:,} tokens) and "
             f"{meta['n_val_files']} held-out files ({meta['n_val_tokens']:,} tokens); split per file by "
             f"`{meta['split']}` with val_permille = {meta['val_permille']}. Test suites, vendored code, "
             "generated tables and minified files are excluded. Full file lists: `meta.json` of `prepare`.",
             "", "| source | version | license | files used |", "|---|---|---|---|"]
    used = {}
    for rel, source, _ in meta["files"]["train"] + meta["files"]["val"]:
        used[source] = used.get(source, 0) + 1
    for name, info in meta["sources"].items():
        lines.append(f"| {'Python standard library' if name == 'stdlib' else name} | "
                     f"{info.get('version', '?')} | {info['license']} | {used.get(name, 0)} |")
    return lines + [""]


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """`prepare`, `train`, `evaluate` subcommands."""
    ap = argparse.ArgumentParser(prog="mmspec.text.recipe", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="corpus + tokenizer + token arrays (CPU)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--val-permille", type=int, default=40, help="held-out files per 1000 (by hash)")
    p.add_argument("--max-train-tokens", type=int, default=12_500_000)
    p.add_argument("--package-bytes", type=int, default=5_000_000,
                   help="source bytes per permissive package (0: standard library only)")
    t = sub.add_parser("train", help="train target + drafter (GPU; CPU fallback)")
    t.add_argument("--data", default=DEFAULT_DATA)
    t.add_argument("--out", default=DEFAULT_OUT)
    t.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    t.add_argument("--time-budget", type=float, default=400.0, help="wall-clock seconds, whole command")
    t.add_argument("--quick", action="store_true", help="tiny models, ~20 steps each (smoke test)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--context", type=int, default=512)
    t.add_argument("--target-frac", type=float, default=0.65, help="share of the budget for the target")
    t.add_argument("--compile", action="store_true", help="torch.compile the models (off by default)")
    t.add_argument("--no-resume", action="store_true", help="ignore checkpoints in OUT/ckpt")
    t.add_argument("--keep-ckpt", action="store_true", help="keep OUT/ckpt after a completed run")
    t.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("distill", help="retrain only the drafter against the saved target (GPU; CPU fallback)")
    d.add_argument("--data", default=DEFAULT_DATA)
    d.add_argument("--out", default=DEFAULT_OUT, help="zoo folder holding code-target/ (code-draft/ is replaced)")
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    d.add_argument("--time-budget", type=float, default=330.0, help="wall-clock seconds, all variants")
    d.add_argument("--variants", default=DRAFT_VARIANTS,
                   help="comma-separated LAYERSxHIDDENxFFN drafters to train; the best agreement is kept")
    d.add_argument("--pretrain-frac", type=float, default=0.3,
                   help="share of each variant's time for corpus pretraining before distillation")
    d.add_argument("--quick", action="store_true", help="~10 steps per stage (smoke test)")
    d.add_argument("--batch-size", type=int, default=None)
    d.add_argument("--context", type=int, default=512)
    d.add_argument("--compile", action="store_true", help="torch.compile the drafter (off by default)")
    d.add_argument("--no-resume", action="store_true", help="ignore checkpoints in OUT/ckpt-distill")
    d.add_argument("--keep-ckpt", action="store_true", help="keep OUT/ckpt-distill after a completed run")
    d.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="losses, agreement, samples, model cards (CPU)")
    e.add_argument("--data", default=DEFAULT_DATA)
    e.add_argument("--out", default=DEFAULT_OUT)
    e.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    e.add_argument("--max-tokens", type=int, default=24_576, help="held-out tokens to score")
    e.add_argument("--new-tokens", type=int, default=64)
    return ap


def main(argv=None) -> int:
    """Entry point (also behind `mmspec zoo train text`)."""
    args = build_parser().parse_args(argv)
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "train":
        train(args)
    elif args.cmd == "distill":
        distill(args)
    else:
        evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
