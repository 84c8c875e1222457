"""`distill`: sequence-level distillation of the speech draft on the target's own greedy output (no audio)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from mmspec.training import card_section, hardware, progress_bar, setup_device

from .card import DISTILL_HEADING, distill_section
from .data import split_of, stdlib_sentences
from .tensors import draft_agreement, steps_tensors
from .train import lm_eval_loss, save_lm, train_lm


def self_generated(target, items: list[dict], batch: int, max_steps: int) -> list[np.ndarray]:
    """The target's own greedy LM steps ``[n, K]`` (int16, delayed layout, up to its end or ``max_steps``)
    for every (text, voice) item, generated with mmspec's autoregressive loop, one voice per batch."""
    from mmspec import autoregressive

    out: list = [None] * len(items)
    bar = progress_bar("target greedy", total=len(items))
    for v in sorted({it["voice"] for it in items}):
        target.voice = v
        idx = [i for i, it in enumerate(items) if it["voice"] == v]
        idx.sort(key=lambda i: len(items[i]["text"]))  # similar lengths share a batch
        for b in range(0, len(idx), batch):
            rows = idx[b: b + batch]
            gen = autoregressive(target, [items[i]["text"] for i in rows], max_new_tokens=max_steps)
            for r, i in enumerate(rows):
                out[i] = gen.tokens[r, : int(gen.lengths[r])].cpu().numpy().astype(np.int16)  # [n, K]
            bar.update(len(rows))
    bar.close()
    return out


def distill(args) -> None:
    """Sequence-level distillation of the draft on the target's own greedy output (CPU-friendly).

    What speculative decoding needs from a draft is the target's next frame on the target's OWN outputs,
    so the training set here is not audio: every transcript of the corpus (all of the stdlib sentences,
    with voice i % voices; no espeak-ng or codec needed) is spoken by the target with greedy decoding,
    and the draft is trained with cross-entropy on those frames (optionally plus KL to the target's
    logits, ``--kl``). The 5% validation split of the transcripts is held out. The draft starts from
    ``--init`` (the shipped draft by default) or from scratch with ``--hidden/--layers``.
    """
    from ..target import SpeechTarget

    device = setup_device(args.device, seed=args.seed)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    zoo, out = Path(args.zoo), Path(args.out)
    ckpt = out / "checkpoints"
    # 1. Transcripts: every stdlib sentence, voices in turn.
    meta = json.loads((zoo / "speech" / "mmspec_speech.json").read_text())
    items = _transcripts(args.max_texts, len(meta["voices"]))
    # 2. The target's greedy steps (cached: the slow part on a CPU).
    target = SpeechTarget.from_pretrained(str(zoo / "speech"), load_codec=False, device=str(device))
    ckpt.mkdir(parents=True, exist_ok=True)
    cache = ckpt / f"greedy_steps_{len(items)}.npz"
    gen, gen_s = _greedy_steps(target, items, cache, args.gen_batch, meta["max_frames"] + meta["num_codebooks"])
    K, C = meta["num_codebooks"], meta["codebook_size"]
    ended = sum(bool((s[:, -1] == C + 1).any()) for s in gen)
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in steps_tensors(items, gen, K, C).items()}
    train_idx = np.array([i for i, it in enumerate(items) if it["split"] == "train"])
    valid_idx = np.array([i for i, it in enumerate(items) if it["split"] == "valid"])
    n_steps = int(sum(len(s) for s in gen))
    print(f"{len(items)} target utterances ({len(train_idx)} train / {len(valid_idx)} valid, {ended} ended "
          f"within {meta['max_frames']} frames), {n_steps} steps, generated in {gen_s:.0f} s")
    # 3. The draft: the shipped one or a fresh one of the asked size.
    draft = _initial_draft(args, K, C, len(meta["voices"])).to(device)
    teacher = target.model.float()  # fp32 for the scores (and the KL, with --kl)
    before = lm_eval_loss(draft, data, valid_idx, device)
    draft, steps, best = train_lm("distill", draft, data, train_idx, valid_idx, device, time.time() + args.minutes * 60,
                                  ckpt, args.batch, args.lr, args.seed, teacher=teacher if args.kl else None, distill_after=0.0,
                                  eval_every=args.eval_every)
    agree = draft_agreement(teacher, draft, data, valid_idx)
    # 4. Save the draft next to the target (fp16, same metadata) with a record of this stage.
    record = {"stage": "sequence-level distillation on the target's greedy output", "device": hardware(device),
              "texts": len(items), "train_utterances": len(train_idx), "valid_utterances": len(valid_idx),
              "ended": ended, "steps_generated": n_steps, "generation_s": round(gen_s, 1), "steps": steps,
              "minutes": args.minutes, "kl": bool(args.kl), "params": sum(p.numel() for p in draft.parameters()),
              "valid_ce_on_target_greedy_before": round(before, 4), "valid_ce_on_target_greedy": round(best, 4),
              "greedy_top1_agreement_valid": agree, "layers": draft.config.num_hidden_layers, "init": _short_path(args.init, zoo) if args.init else "scratch"}
    _save_draft(args, draft, zoo, out / "speech-draft", record)
    if not args.keep_checkpoints:  # the resumable state and the generated steps: nothing left in the zoo
        (ckpt / "distill.ckpt").unlink(missing_ok=True)
        cache.unlink(missing_ok=True)
        if not any(ckpt.iterdir()):
            ckpt.rmdir()
    print(json.dumps(record, indent=2))


def _transcripts(max_texts: int | None, n_voices: int) -> list[dict]:
    """Every stdlib sentence (up to ``max_texts``), voice i % n_voices, with its train/valid split."""
    texts = stdlib_sentences()[: max_texts]
    items = [{"text": t, "voice": i % n_voices, "split": split_of(t)} for i, t in enumerate(texts)]
    if not any(it["split"] == "valid" for it in items) or all(it["split"] == "valid" for it in items):
        raise ValueError(f"--max-texts {max_texts} leaves no held-out or no training transcript "
                         f"(about 1 in 20 is held out); use at least 40")
    return items


def _greedy_steps(target, items: list[dict], cache: Path, batch: int, max_steps: int) -> tuple[list, float]:
    """The target's greedy steps per item and the seconds they took, from ``cache`` when it exists."""
    t0 = time.time()
    if cache.exists():  # (generation_s: the time of the run that generated it)
        saved = np.load(cache)
        gen = [saved[f"s{i}"] for i in range(len(items))]
        return gen, float(saved["generation_s"]) if "generation_s" in saved else time.time() - t0
    gen = self_generated(target, items, batch, max_steps)
    gen_s = time.time() - t0
    np.savez(cache, generation_s=np.array(gen_s), **{f"s{i}": s for i, s in enumerate(gen)})
    return gen, gen_s


def _initial_draft(args, K: int, C: int, n_voices: int):
    """``--init`` (optionally grown to ``--grow-layers``) or a fresh ``SpeechLM`` of ``--hidden/--layers/--heads``."""
    from ..lm import SpeechLM, SpeechLMConfig

    if args.init:
        draft = SpeechLM.from_pretrained(args.init, dtype=torch.float32)
        return grow_layers(draft, args.grow_layers) if args.grow_layers else draft
    sizes = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 num_key_value_heads=max(1, args.heads // 2), intermediate_size=args.hidden * 3)
    return SpeechLM(SpeechLMConfig(num_codebooks=K, codebook_size=C, num_voices=n_voices, **sizes))


def _save_draft(args, draft, zoo: Path, folder: Path, record: dict) -> None:
    """fp16 ``lm/``, the zoo draft's ``mmspec_speech.json``, ``distill_summary.json`` and the card's section."""
    save_lm(draft, folder / "lm")
    dmeta = json.loads((zoo / "speech-draft" / "mmspec_speech.json").read_text())
    (folder / "mmspec_speech.json").write_text(json.dumps(dmeta, indent=2))
    earlier = Path(args.init).parent / "distill_summary.json" if args.init else None
    if earlier is not None and earlier.exists():  # the init was itself distilled: keep its record
        record["previous"] = json.loads(earlier.read_text())
    (folder / "distill_summary.json").write_text(json.dumps(record, indent=2) + "\n")
    card = folder / "README.md"
    source = card if card.exists() else zoo / "speech-draft" / "README.md"
    base = source.read_text() if source.exists() else "# mmspec speech zoo: draft codec LM\n"
    card.write_text(base.split(DISTILL_HEADING)[0].rstrip("\n") + "\n\n"
                    + "\n".join(card_section(*distill_section(record))))


def grow_layers(model, layers: int):
    """A copy of a ``SpeechLM`` with ``layers`` decoder layers: the old ones first, then new ones whose
    attention and MLP output projections are zero, so each new layer starts as the identity (the grown
    model computes exactly what the old one did) and training can only add to it."""
    from ..lm import SpeechLM, SpeechLMConfig

    old = model.config.num_hidden_layers
    if layers < old:
        raise ValueError(f"--grow-layers {layers} is fewer than the init's {old} layers")
    cfg = SpeechLMConfig(**{**model.config.to_dict(), "num_hidden_layers": layers})
    grown = SpeechLM(cfg)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".layers." in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        for layer in grown.backbone.layers[old:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return grown


def _short_path(path: str, zoo: Path) -> str:
    """``path`` relative to the zoo folder when it lies inside it (model cards travel with the zoo)."""
    try:
        return str(Path(path).resolve().relative_to(zoo.resolve()))
    except ValueError:
        return str(path)
