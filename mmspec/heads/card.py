"""The model card (README.md) of a trained self-drafter folder: what it is, what it was trained on and for
how long, and what it measured against its target (agreement, mean accepted frames, speedup), with the
commands that produced each number. Written with ``mmspec.training.card``, the zoo's one card writer."""
from __future__ import annotations

import json
from pathlib import Path

from .. import training

KINDS = {"eagle": "EAGLE layer (one Llama decoder layer over [target feature, next-frame embedding], read "
                  "through the target's frozen output head)",
         "medusa": "{num_heads} Medusa heads (residual SiLU blocks on the target's last hidden state, read through "
                   "its frozen output head)",
         "eagle1": "EAGLE-1 layer in vLLM's and SGLang's layout (fc over [next-frame embedding, target feature], one "
                   "Llama decoder layer without an input norm, read through the target's frozen output head)",
         "medusa1": "{num_heads} Medusa heads in vLLM's layout (one residual SiLU block each, read through the "
                    "target's frozen output head)"}


def write_card(folder: str | Path, measured: dict | None = None, command: str = "") -> Path:
    """Write ``folder/README.md`` from its ``config.json`` and ``measured`` (keys: ``mean_accepted``,
    ``speedup``, ``rule``, ``hardware``, ``command``, ``draft_model`` {same keys}, ``also`` {method label: same
    keys}, optional)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    kind = KINDS[config["kind"]].format(num_heads=config.get("num_heads"))
    intro = [f"A self-drafter for `{config.get('target')}`: an {kind}. It only proposes; the target verifies every "
             "frame, so output is exactly the target's (greedy: token for token; sampling: its distribution)."]
    sections = [("Model", _model(folder, config)), ("Training", _training(config, command)),
                ("Evaluation", _evaluation(config.get("training", {}), measured))]
    front = {"library_name": "mmspec", "tags": f"[mmspec, speculative-decoding, self-drafting, {config['kind']}]"}
    return training.write_card(folder, training.card(f"mmspec zoo: {folder.name}", intro, sections, front))


def _model(folder: Path, config: dict) -> list[str]:
    """The Model section: kind and sizes, the target it was trained for, drafting settings, draft vocabulary."""
    t, size_mb = config.get("training", {}), (folder / "model.safetensors").stat().st_size / 2**20
    lines = [f"- Kind `{config['kind']}`, hidden size {config['hidden_size']}, vocabulary {config['vocab_size']}, "
             f"codebooks {config['num_codebooks']}; fp16 safetensors, {size_mb:.1f} MB.",
             f"- Trained for target fingerprint `{config['fingerprint']}` (its output head); `load_heads` refuses any "
             "other target."]
    stops = []
    if config.get("confidence"):
        stops.append(f"chains stop where the layer's top probability is below {config['confidence']}")
    if config.get("depth"):
        stops.append(f"it drafts at most {config['depth']} frames a step")
    if stops:
        lines.append(f"- Drafting ({', '.join(stops)}): from `config.json`, used whenever the folder loads.")
    if config.get("draft_vocab"):
        lines.append(f"- Reduced draft vocabulary (EAGLE-3): the {len(config['draft_vocab'])} most frequent training "
                     f"ids; they cover {t.get('draft_vocab_coverage', float('nan')):.1%} of held-out tokens.")
    return lines


def _training(config: dict, command: str) -> list[str]:
    """The Training section: data, steps, time and hardware, the starting point, the command."""
    t = config.get("training", {})
    return [f"- Data: {t.get('data')} ({t.get('windows')} windows of {t.get('seq_len')}); the target is frozen, its "
            "hidden states cached once; loss: feature regression + KL to the target's next-frame distribution"
            + (" (with a second pass on the layer's own predicted features)" if config["kind"].startswith("eagle") else "")
            + ".",
            f"- {t.get('steps')} optimizer steps in {t.get('train_seconds')} s on {t.get('hardware')}.",
            *([f"- Started from: {t['init']}."] if t.get("init") else []),
            f"- Command: `{command or 'mmspec heads train'}`"]


def _evaluation(t: dict, measured: dict | None) -> list[str]:
    """The Evaluation table: held-out agreement, then what a bench run measured (when given)."""
    rows = [["held-out top-1 agreement with the target (whole frames, teacher-forced)", t.get("held_out_top1")]]
    if not measured:
        return training.card_table(["metric", "value"], rows)
    rows += [[f"mean accepted frames per target forward ({measured.get('rule', 'greedy')})",
              f"{measured['mean_accepted']:.2f}"],
             ["wall-clock speedup over autoregressive", f"{measured['speedup']:.2f}x"]]
    if measured.get("draft_model"):
        d = measured["draft_model"]
        rows.append(["the zoo draft model, same run: mean accepted / speedup",
                     f"{d['mean_accepted']:.2f} / {d['speedup']:.2f}x"])
    for name, m in measured.get("also", {}).items():
        cell = name.replace("|", "\\|")  # a cascade's bar would end the table cell
        lossy = "" if m.get("lossless", True) else " (a lossy rule)"
        rows.append([f"`{cell}`{lossy}, same run: mean accepted / speedup",
                     f"{m['mean_accepted']:.2f} / {m['speedup']:.2f}x"])
    return training.card_table(["metric", "value"], rows) + [
        "", f"Measured on {measured.get('hardware', 'this CPU')} with `{measured.get('command', '')}`."]
