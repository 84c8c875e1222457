"""Start an ``eagle1`` layer (the engines' EAGLE-1 layout) from trained ``eagle`` heads of the same target.

    python -m text.eagle1_init text/zoo/code-heads --out runs/eagle1-init
    mmspec heads train --target zoo:code-target --kind eagle1 --init runs/eagle1-init --out runs/code-heads-eagle1

What carries over exactly: the fc columns (reordered to ``[embedding, feature]``), the attention and MLP weights,
and the input norm's gain, folded into the q/k/v columns. What does not: the fc bias (vLLM's fc has none) and
the input norm's division by the root mean square, which no linear map can represent; the fine-tuning run
relearns around them, much faster than a layer trained from scratch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def convert(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """An ``eagle`` state dict (fc over ``[feature H, embedding E]`` with bias, input norm) as an ``eagle1`` one."""
    state = {k: v.float() for k, v in state.items()}
    fc = state.pop("fc.weight")  # [H, H + E]: feature columns first
    state.pop("fc.bias")
    gain = state.pop("layer.input_layernorm.weight")  # [H]
    state["fc.weight"] = torch.cat([fc[:, hidden:], fc[:, :hidden]], dim=1)  # [H, E + H]: embedding first
    for name in ("q_proj", "k_proj", "v_proj"):
        key = f"layer.self_attn.{name}.weight"
        state[key] = state[key] * gain[None, :]
    return state


def main(argv=None) -> int:
    from safetensors.torch import load_file, save_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("heads", help="a folder of eagle heads (config.json + model.safetensors)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    config = json.loads((Path(args.heads) / "config.json").read_text())
    if config.get("kind") != "eagle":
        raise SystemExit(f"{args.heads} holds {config.get('kind')!r} heads; this converts kind 'eagle' only")
    if config["embed_dim"] != config["hidden_size"]:
        raise SystemExit("an eagle1 layer needs the embedding size to equal the hidden size")
    state = convert(load_file(str(Path(args.heads) / "model.safetensors")), config["hidden_size"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    keep = ("hidden_size", "embed_dim", "num_attention_heads", "intermediate_size", "window", "target", "vocab_size",
            "num_codebooks", "fingerprint")
    (out / "config.json").write_text(json.dumps({**{k: config[k] for k in keep if k in config}, "kind": "eagle1",
                                                 "converted_from": str(args.heads)}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
