"""The image zoo's model cards (``README.md`` of ``shapes/`` and ``shapes-draft/``)."""
from __future__ import annotations

import json
import os

from mmspec.training import card, card_table, write_card

from .loop import HELDOUT_SEED


def _load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _stage_rows(log: dict, names) -> list[str]:
    rows = [[n, f"{log.get(n, {}).get('params', '?'):,}", *(log.get(n, {}).get(k, d) for k, d in
            (("steps", "?"), ("seconds", "?"), ("final_loss", "?"), ("heldout_nll", "-")))] for n in names]
    return card_table(["stage", "params", "steps", "seconds", "final train loss", "held-out NLL (nats/code)"], rows)


USAGE = """```python
import os, torch
import mmspec.image
from mmspec.image.models import load_zoo, sample_codes, decode_codes, to_uint8
zoo = load_zoo(os.path.join(os.path.dirname(mmspec.image.__file__), "zoo", "{name}"))
cls = torch.tensor([zoo.class_token_id("red ring")] * 4)
codes = sample_codes(zoo.transformer, cls, zoo.null_token_id, zoo.num_codes, 64,
                     cfg_scale=zoo.meta["default_cfg_scale"])            # [4, 64]
images = decode_codes(zoo.vqvae, codes.view(-1, 8, 8))                  # [4, 3, 32, 32] in [-1, 1]
```"""


def write_cards(t_dir: str, d_dir: str, res: dict) -> None:
    """Model cards (README.md) for the target and the drafter from training.json + eval results."""
    log = _load_json(os.path.join(t_dir, "training.json"))
    data = log.get("data", {})
    common = [f"Trained offline from scratch by `python -m mmspec.image.recipe train` (the shipped zoo: `--out "
              f"image/zoo`, from a checkout's root) on {data.get('n_train', '?')} procedural 32x32 images "
              f"(`mmspec.image.shapes`, 24 classes \"<colour> <shape>\", deterministic from (seed, index)); "
              f"held-out images use seed {HELDOUT_SEED}. A toy for testing speculative decoding of image tokens, "
              "not a general image generator.", "",
              f"Training hardware: {log.get('hardware', '?')}. Evaluation: {res['hardware']}. Token layout and "
              "file format: see `mmspec/image/models.py`.", ""]
    write_card(t_dir, _target_card(t_dir, res, log, common))
    write_card(d_dir, _draft_card(d_dir, res, log, common))


def _target_card(t_dir: str, res: dict, log: dict, common: list[str]) -> str:
    """The target's card: folders, training table, evaluation, guidance sweep, use."""
    v, vt = res["vqvae"], log.get("vqvae", {})
    folders = card_table(["folder", "what"], [
        ["`transformer/`", "`LlamaForCausalLM` (fp16 safetensors), sequence `[class] + 64 codes`, CFG via null class"],
        ["`vqvae/`", f"`diffusers.VQModel` (fp16): 32x32 RGB <-> 8x8 grid of {vt.get('params', 0) and 512} codes"],
        ["`classifier/`", "tiny CNN scoring generated images (quality proxy)"],
        ["`mmspec_image.json`", "class names, token ids, grid, default guidance scale"]])
    sweep = card_table(["cfg scale", "accuracy", "samples", "CPU sampling seconds"],
                       [[r["cfg_scale"], f"{r['accuracy']:.3f}", r["n"], r["sampling_seconds"]]
                        for r in res["target_sweep"]])
    evaluation = [
        f"* VQ tokenizer, {v['n_heldout']} held-out images: reconstruction PSNR **{v['psnr_db']} dB**, codebook",
        f"  usage {v['codebook_usage']:.1%}.",
        f"* Classifier accuracy: {v['classifier_acc_real']:.1%} on real held-out images,",
        f"  {v['classifier_acc_reconstructed']:.1%} on their VQ reconstructions.",
        "* Samples (temperature 1.0, no top-k), classifier accuracy by guidance scale:", "", *sweep, "",
        f"Default guidance scale: **{res['default_cfg_scale']}** (smallest scale above 1 with >= 80% accuracy).", "",
        "![samples: one column per class, 4 samples each](samples.png)"]
    sections = [("Training", _stage_rows(log, ["classifier", "vqvae", "target"])), ("Evaluation", evaluation),
                ("Use", [USAGE.format(name=os.path.basename(os.path.normpath(t_dir)))])]
    return card("shapes: class-conditional image-token target (mmspec offline zoo)", common + folders, sections)


def _draft_card(d_dir: str, res: dict, log: dict, common: list[str]) -> str:
    """The drafter's card: training table, acceptance under the guided target, its own samples."""
    dlog = _load_json(os.path.join(d_dir, "training.json")) or log
    ds, name = res["draft_samples"], os.path.basename(os.path.normpath(d_dir))
    intro = common + ["Same vocabulary, token layout and VQ tokenizer (`../shapes/vqvae`) as `shapes`; trained on "
                      "the same", "codes with 0.5 * cross-entropy + 0.5 * KL(target || draft) distillation."]
    evaluation = ["* Expected acceptance rate per token under the guided target, sum_x min(p, q) on target samples:",
                  f"  **{res['draft_acceptance']}**.",
                  f"* Drafter alone: classifier accuracy {ds['accuracy']:.1%} over {ds['n']} samples.", "",
                  "![drafter samples: one column per class](samples.png)"]
    use = [f'`load_zoo(os.path.join(os.path.dirname(mmspec.image.__file__), "zoo", "{name}"))`',
           "returns the drafter with the target's VQ tokenizer."]
    sections = [("Training", _stage_rows(dlog, ["draft"])),
                (f"Evaluation (guidance scale {res['default_cfg_scale']}, temperature 1.0)", evaluation), ("Use", use)]
    return card("shapes-draft: drafter for the shapes target (mmspec offline zoo)", intro, sections)
