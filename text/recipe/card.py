"""The text zoo's model cards: what each model is, how it was trained and scored, corpus and licenses."""

from __future__ import annotations

from mmspec.training import card, card_table


FRONT_MATTER = {"library_name": "transformers", "pipeline_tag": "text-generation", "license": "apache-2.0",
                "tags": "[mmspec, speculative-decoding, python, code]"}
RETRAIN = ["```bash", "# in a checkout, from its root; --out text/zoo rebuilds the shipped zoo (default: ./zoo-out/text)",
           "python -m mmspec.text.recipe prepare --data .gpu/text",
           "python -m mmspec.text.recipe train --data .gpu/text --out text/zoo --device cuda --time-budget 400",
           "python -m mmspec.text.recipe evaluate --data .gpu/text --out text/zoo",
           "# the drafter alone, against the saved target (mmspec zoo distill text --out text/zoo ...):",
           "python -m mmspec.text.recipe distill --data .gpu/text --out text/zoo --device cuda --time-budget 330",
           "```"]


def model_card(role: str, model, meta: dict, log: dict, result: dict) -> str:
    """README.md for one zoo folder: what it is, how it was trained and scored, corpus and licenses."""
    cfg = model.config
    other = "code-draft" if role == "target" else "code-target"
    intro = [f"A small Python-code {'target' if role == 'target' else 'drafter'} for speculative decoding "
             f"demos in mmspec; its partner is `{other}` (same tokenizer). Trained offline from scratch on "
             "Python source that ships with Python and a few permissively licensed packages. It completes "
             "code; it is not a general or instruction-following model."]
    model_lines = [
        f"- `LlamaForCausalLM`, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{cfg.num_hidden_layers} layer(s), hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
        f"SwiGLU {cfg.intermediate_size}, RoPE, tied embeddings, fp16 safetensors.",
        f"- Tokenizer: byte-level BPE, vocabulary {meta['vocab_size']}, `<|endoftext|>` (id "
        f"{meta['eot_id']}) is BOS/EOS/document separator, `<|pad|>` (id {meta['pad_id']}) pads. "
        "Round-trips any text exactly. Training documents start after `<|endoftext|>`, and the "
        "tokenizer puts it in front of every prompt."]
    use = ["```python", "from transformers import AutoTokenizer, LlamaForCausalLM",
           f"tok = AutoTokenizer.from_pretrained('code-{role}')",
           f"model = LlamaForCausalLM.from_pretrained('code-{role}')", "```"]
    sections = [("Model", model_lines), ("Training", _training(role, log)), *_evaluation(result, role),
                ("Corpus", corpus_section(meta)), ("Use", use), ("Retrain", RETRAIN)]
    return card(f"mmspec zoo: code-{role}", intro, sections, FRONT_MATTER)


def _training(role: str, log: dict) -> list[str]:
    """The Training section: hardware, tokens and time of the model's own stages, the drafter's stages."""
    stages = log.get("stages", {})
    run = log.get("draft_run") if role == "draft" and log.get("draft_run") else log  # who trained this model
    own = ["target"] if role == "target" else ["draft", "distill"]
    tokens = sum(stages.get(k, {}).get("tokens", 0) for k in own)
    seconds = sum(stages.get(k, {}).get("seconds", 0) for k in own)
    lines = [f"- Hardware: {run.get('hardware', 'unknown')}; torch {run.get('torch', '?')}, "
             f"transformers {run.get('transformers', '?')}.",
             f"- Tokens seen: {tokens:,} in {seconds:.0f} s (context {run.get('context', '?')}, batch "
             f"{run.get('batch', '?')}, AdamW, cosine LR with warmup, "
             f"{'bf16 autocast' if run.get('device') == 'cuda' else 'fp32'}; whole run "
             f"{run.get('wall_seconds', '?')} s within a {run.get('time_budget', '?')} s budget)."]
    return lines + (_draft_stages(stages, run, log) if role == "draft" else [])


def _draft_stages(stages: dict, run: dict, log: dict) -> list[str]:
    """The drafter's training stages (and the `distill` variants, when `distill` trained it)."""
    lines = []
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
    return lines


def _evaluation(result: dict, role: str) -> list[tuple[str, list[str]]]:
    """The held-out scores table with the quality bar, and the greedy completions."""
    s = result["scores"]
    rows = [["target loss (nats/token)", f"{s['target_loss']:.3f}"],
            ["draft loss (nats/token)", f"{s['draft_loss']:.3f}"],
            ["unigram baseline loss", f"{s['unigram_loss']:.3f}"],
            ["greedy agreement draft vs target", f"{s['agreement']:.3f}"],
            ["scored tokens", f"{s['scored_tokens']:,} ({s['windows']} windows of {s['context']})"]]
    scores = card_table(["metric", "value"], rows) + [
        "", "Quality bar: " + ", ".join(f"{k} = {v}" for k, v in result["quality_bar"].items())
        + f". Evaluated on {result['eval_hardware']}."]
    samples = []
    for row in result["samples"][role]:
        flag = " (looping)" if row["looping"] else ""
        samples += [f"Prompt `{row['prompt']!r}`{flag}:", "", "```python", row["prompt"] + row["completion"],
                    "```", ""]
    return [("Evaluation (held-out files, teacher-forced)", scores),
            ("Greedy completions (64 new tokens)", samples[:-1])]


def corpus_section(meta: dict) -> list[str]:
    """The Corpus section: sources with versions and licenses, sizes, the split rule."""
    lines = [f"{meta['n_train_files']} training files ({meta['n_train_tokens']:,} tokens) and "
             f"{meta['n_val_files']} held-out files ({meta['n_val_tokens']:,} tokens); split per file by "
             f"`{meta['split']}` with val_permille = {meta['val_permille']}. Test suites, vendored code, "
             "generated tables and minified files are excluded. Full file lists: `meta.json` of `prepare`.",
             ""]
    used = {}
    for rel, source, _ in meta["files"]["train"] + meta["files"]["val"]:
        used[source] = used.get(source, 0) + 1
    rows = [["Python standard library" if name == "stdlib" else name, info.get("version", "?"), info["license"],
             used.get(name, 0)] for name, info in meta["sources"].items()]
    return lines + card_table(["source", "version", "license", "files used"], rows)
