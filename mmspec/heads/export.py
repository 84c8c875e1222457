"""Export trained self-drafters in the checkpoint layouts serving engines load (``mmspec heads export``).

    export("runs/eagle1", "vllm", "out/vllm-eagle")        # config.json + model.safetensors + README.md

Formats (key names and config fields read from the engines' model code):

* ``vllm``: EAGLE-1 as ``vllm/model_executor/models/llama_eagle.py`` builds it: a one-layer Llama config
  (``architectures: ["LlamaForCausalLM"]``, vLLM prefixes ``Eagle``), ``fc.weight [H, 2H]`` (no bias) over
  ``[embedding, feature]``, ``layers.0.self_attn.{q,k,v,o}_proj``, ``layers.0.mlp.{gate,up,down}_proj``,
  ``layers.0.post_attention_layernorm``; no input norm, no final norm, no embedding, no output head (the
  target's are shared).
* ``sglang``: the same weights with ``fc.bias`` (zeros: the engines' layout has none to train) and
  ``architectures: ["LlamaForCausalLMEagle"]`` (``python/sglang/srt/models/llama_eagle.py``); a reduced
  draft vocabulary becomes ``hot_token_map.pt`` (``--speculative-token-map``: the shared head's rows at those ids).
* ``medusa``: vLLM's ``medusa.py``: ``blocks.{h}.layers.0.{weight,bias}`` (``h + silu(W h + b)``) and
  ``lm_heads.{h}.weight`` (copies of the target's output head), ``model_type: medusa``.
* ``eagle3``: refused for every kind today (see ``_refusal``).

Only heads whose computation the format reproduces exactly are written (kinds ``eagle1`` and ``medusa1``,
``engine_kinds.py``); everything is checked before the first file is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .store import read_heads_config, resolve_heads

FORMATS = ("vllm", "sglang", "eagle3", "medusa")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TOKEN_MAP = "hot_token_map.pt"  # a reduced draft vocabulary, for SGLang's --speculative-token-map
KIND_OF = {"vllm": "eagle1", "sglang": "eagle1", "medusa": "medusa1"}  # the one kind each format holds


def export(heads: str | Path, fmt: str, out: str | Path, dtype: str = "float16", target: str | None = None) -> Path:
    """Write the heads in ``heads`` (a folder or ``zoo:NAME``) as ``fmt`` into ``out``; returns ``out``.

    ``target``: the target's folder, ``zoo:NAME`` or hub id (default: the one the heads were trained for);
    its config gives the context length (and must match the heads' sizes), and the ``medusa`` format copies
    its output head (checked by fingerprint). ValueError (and nothing written) for an unknown format or dtype,
    or heads the format cannot represent."""
    # 1. Everything that can refuse, before any file is touched.
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; export dtypes: {', '.join(DTYPES)}")
    folder = resolve_heads(heads)
    config = read_heads_config(folder)
    reason = _refusal(config, fmt)
    if reason:
        raise ValueError(f"cannot export {str(heads)!r} (kind {config['kind']!r}) as {fmt}: {reason}")
    out = Path(out)
    if out.resolve() == folder.resolve() or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {str(out)!r} is the heads folder itself or a file; export into another folder")
    target_name = target or config.get("target") or ""
    target_config = _target_config(target_name, config)
    # 2. The engine's tensors, config and card, in memory.
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    if fmt == "medusa":
        tensors, engine_config = _medusa(state, config, _target_head(target_name, config, folder))
    else:
        tensors, engine_config = _eagle1(state, config, target_config, with_bias=fmt == "sglang")
    engine_config["torch_dtype"] = dtype
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in tensors.items()}
    card = _card(fmt, out, target_path(target_name), config, dtype)
    # 3. Write.
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(engine_config, indent=1) + "\n")
    (out / "README.md").write_text(card)
    if config.get("draft_vocab"):  # SGLang's hot token map: the draft reads the head's rows at these ids only
        torch.save(torch.tensor(config["draft_vocab"], dtype=torch.long), out / TOKEN_MAP)
    elif (out / TOKEN_MAP).exists():  # left by an earlier export into this folder: it would shrink the vocabulary
        (out / TOKEN_MAP).unlink()
    return out


def _refusal(config: dict, fmt: str) -> str:
    """Why ``fmt`` cannot hold these heads ('' when it can)."""
    kind = config["kind"]
    if fmt == "eagle3":
        return ("EAGLE-3's layer is another function: it fuses three intermediate hidden states of the target "
                "(fc [H, 3H], default layers 2, L//2 and L-3; or takes the last one when eagle_config sets "
                "use_aux_hidden_state false), normalizes the embedding and that state separately (input_layernorm, "
                "hidden_norm), attends over their concatenation (q/k/v over 2H), reads tokens through a final norm "
                "and its own lm_head with a d2t map while feeding back the state before that norm; no mmspec kind "
                "computes that. Export as vllm or sglang (EAGLE-1) instead")
    if kind == "eagle" and fmt in ("vllm", "sglang"):
        return ("the eagle kind normalizes the layer's attention input (input_layernorm) and has an fc bias over "
                "[feature, embedding]; the engines' EAGLE-1 layer 0 has no input norm" +
                (" and vLLM's fc no bias" if fmt == "vllm" else "") +
                ", so the export would compute something else. Train with `mmspec heads train --kind eagle1`")
    if kind == "medusa" and fmt == "medusa":
        return ("the medusa kind's blocks are h + W2 silu(W1 h); vLLM's Medusa blocks are h + silu(W h + b). "
                "Train with `mmspec heads train --kind medusa1`")
    if kind != KIND_OF[fmt]:
        return f"the {fmt} format holds heads of kind {KIND_OF[fmt]!r} only"
    if config.get("draft_vocab") and fmt != "sglang":  # SGLang takes it as --speculative-token-map
        return (f"the heads draft from a reduced vocabulary ({len(config['draft_vocab'])} ids), which the {fmt} "
                "layout has no field for; export as sglang (a token map) or retrain with --draft-vocab 0")
    if config.get("num_codebooks", 1) != 1:
        return "the engines serve text models (one token per frame); these heads draft frames of several codebooks"
    return ""


def target_path(name: str) -> str:
    """The target as an engine names it: a zoo name resolved to its folder, a path or a hub id as given."""
    from mmspec import files, modalities

    if not (name.startswith("zoo:") or Path(name).exists()):
        return name
    return str(Path(files.resolve(name, modalities.get("text").zoo, "config.json", "text")).resolve())


def _target_config(name: str, config: dict) -> dict:
    """The target's ``config.json``, checked against the heads' sizes."""
    from mmspec import hf

    if not name:
        raise ValueError("the heads name no target: pass --target (the target's folder or hub id)")
    target = hf.read_config(target_path(name))
    if not target.get("max_position_embeddings"):
        raise ValueError(f"the target {name!r} names no max_position_embeddings (its context length) in config.json")
    for key in ("hidden_size", "vocab_size"):
        if target.get(key) not in (None, config[key]):
            raise ValueError(f"the target {name!r} has {key} {target.get(key)}, the heads were trained for "
                             f"{config[key]}: pass the heads' own target with --target")
    return target


def _target_head(name: str, config: dict, folder: Path) -> torch.Tensor:
    """The target's output-head weight ``[V, H]`` (the medusa format holds copies), checked by fingerprint."""
    from mmspec import modalities

    from .store import check_target

    target = modalities.get("text").load(target_path(name), device="cpu", dtype="float32", fast=False)
    check_target(config, target, folder)
    linear = target.output_head().as_linear()
    if linear is None or linear[1] is not None:
        raise ValueError(f"the target {name!r} has an output head that is not one linear map without a bias, which "
                         "vLLM's Medusa lm_heads cannot hold")
    return linear[0].detach()


def _eagle1(state: dict, config: dict, target: dict, with_bias: bool) -> tuple[dict, dict]:
    """An ``eagle1`` layer's tensors under the engines' EAGLE-1 names, and its one-layer Llama config."""
    tensors = {"fc.weight": state["fc.weight"]}  # [H, 2H] over [embedding, feature], as the engines concatenate
    if with_bias:
        tensors["fc.bias"] = torch.zeros(config["hidden_size"], dtype=state["fc.weight"].dtype)
    for key, value in state.items():
        if key.startswith("layer."):
            tensors["layers.0." + key[len("layer."):]] = value
    H, heads = config["hidden_size"], config["num_attention_heads"]
    engine = {"architectures": ["LlamaForCausalLMEagle" if with_bias else "LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": H, "intermediate_size": config["intermediate_size"], "num_hidden_layers": 1,
              "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": H // heads,
              "hidden_act": "silu", "rms_norm_eps": config["rms_norm_eps"],
              "rope_theta": config["rope_theta"], "rope_scaling": None,
              "max_position_embeddings": int(target["max_position_embeddings"]),
              "vocab_size": config["vocab_size"], "attention_bias": False, "mlp_bias": False,
              "tie_word_embeddings": False, "bos_token_id": target.get("bos_token_id"),
              "eos_token_id": target.get("eos_token_id"), "pad_token_id": target.get("pad_token_id")}
    return tensors, engine


def _medusa(state: dict, config: dict, head: torch.Tensor) -> tuple[dict, dict]:
    """A ``medusa1`` module's tensors under vLLM's Medusa names, and its config."""
    tensors = {}
    for h in range(config["num_heads"]):
        tensors[f"blocks.{h}.layers.0.weight"] = state[f"blocks.{h}.weight"]  # [H, H]
        tensors[f"blocks.{h}.layers.0.bias"] = state[f"blocks.{h}.bias"]  # [H]
        tensors[f"lm_heads.{h}.weight"] = head.clone()  # [V, H]: every head reads the target's output head
    engine = {"architectures": ["MedusaModel"], "model_type": "medusa", "hidden_size": config["hidden_size"],
              "vocab_size": config["vocab_size"], "truncated_vocab_size": config["vocab_size"],
              "num_heads": config["num_heads"], "num_hidden_layers": 1, "medusa_fc_bias": True}
    return tensors, engine


def _card(fmt: str, out: Path, target: str, config: dict, dtype: str) -> str:
    """README.md of the export: what it holds and the exact lines that serve it."""
    k = int(config.get("depth") or (config.get("num_heads") if fmt == "medusa" else 4))
    method = "medusa" if fmt == "medusa" else "eagle"
    spec = json.dumps({"method": method, "model": str(out.resolve()), "num_speculative_tokens": k})
    lines = ["---", "library_name: mmspec", f"tags: [mmspec, speculative-decoding, {method}, {fmt}]", "---", "",
             f"# {out.name}: {config['kind']} heads for `{target}`, exported for {fmt}", "",
             f"Exported by `mmspec heads export --format {fmt} --dtype {dtype}` from heads trained for `"
             f"{config.get('target')}` (fingerprint `{config.get('fingerprint')}`). The draft only proposes: the "
             "engine verifies every token with the target, so greedy output is the target's.", ""]
    if fmt == "sglang":
        lines += ["```bash", f"python -m sglang.launch_server --model-path {target} --speculative-algorithm EAGLE "
                  f"--speculative-draft-model-path {out.resolve()} --speculative-num-steps {k} "
                  f"--speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}" +
                  (f" --speculative-token-map {(out / TOKEN_MAP).resolve()}" if config.get("draft_vocab") else ""), "```"]
    else:
        lines += ["```python", "from vllm import LLM", "",
                  f"llm = LLM(model={target!r}, speculative_config={spec})", "```", "", "```bash",
                  f"vllm serve {target} --speculative-config '{spec}'", "```"]
    return "\n".join(lines) + "\n"
