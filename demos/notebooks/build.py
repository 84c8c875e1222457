"""Write the tutorial notebooks (run once: ``python demos/notebooks/build.py``); committed without outputs.

Each notebook is a list of (kind, source) cells; ``tests/test_notebooks.py`` executes them.
"""
from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

PLOT = '''import matplotlib.pyplot as plt
from mmspec import timing


def plot_speedup(calls, repeats=3):
    """Time the baseline and each method in interleaved rounds after a warm-up (``mmspec.timing``: the same
    code as ``mmspec compare`` and ``mmspec bench``); bars: the median speedup, whiskers: min-max over rounds."""
    results = timing.interleave(calls, repeats)
    base = [g.wall_s for g in results["autoregressive"]]
    names = [n for n in results if n != "autoregressive"]
    spreads = [timing.ratio_spread(base, [g.wall_s for g in results[n]]) for n in names]
    low = [s.median - s.low for s in spreads]
    high = [s.high - s.median for s in spreads]
    plt.figure(figsize=(5, 2.2))
    plt.barh(names, [s.median for s in spreads], xerr=[low, high],
             color=["tab:gray" if s.straddles(1.0) else "tab:blue" for s in spreads])
    plt.axvline(1.0, color="k", ls="--", lw=0.8)
    plt.xlabel(f"speedup over autoregressive (median of {repeats} rounds, this CPU)")
    plt.gca().invert_yaxis()
    plt.show()
    env = timing.machine("cpu")
    for n, s in zip(names, spreads):
        st, flags = results[n][-1].stats, timing.flags(s, [g.wall_s for g in results[n]], env)
        print(f"{n:24} speedup {s}  frames per forward {st['mean_accepted']:.2f}  {'; '.join(flags)}")'''

SETUP = '''import torch
torch.set_num_threads(2)  # small models on a laptop CPU: a couple of threads is fastest
import mmspec'''

TEXT = [
    ("md", """# Speculative decoding for text

A small **drafter** guesses the next few tokens cheaply; the **target** model checks all of them in one
forward pass and keeps the longest prefix it agrees with, plus one token of its own. With the **greedy**
accept rule the output is exactly what the target alone would write, only in fewer target forwards.

We use the offline zoo: a code model (`zoo:code-target`) and its small draft (`zoo:code-draft`), and
compare plain autoregressive decoding with two drafters: the draft **model** and **prompt lookup**
(copy n-grams from the prompt, no model at all)."""),
    ("code", SETUP + '''
from mmspec.text import TextTarget

target = TextTarget.from_pretrained("zoo:code-target")
draft = TextTarget.from_pretrained("zoo:code-draft")
prompt = "import os\\n\\n\\ndef list_files(path):\\n    \\"\\"\\"Return the names of the files in path.\\"\\"\\"\\n"'''),
    ("md", "## Baseline: one token per target forward"),
    ("code", '''baseline = mmspec.autoregressive(target, prompt, max_new_tokens=48)
print(prompt + baseline.outputs[0])
print(baseline.stats["new_tokens"], "tokens in", round(baseline.stats["wall_s"], 2), "s")'''),
    ("md", "## Two drafters, same target, same greedy rule"),
    ("code", '''runs = {
    "model drafter": mmspec.generate(target, mmspec.ModelDrafter(draft), prompt, max_new_tokens=48, k=4),
    "prompt lookup": mmspec.generate(target, mmspec.PromptLookupDrafter(max_ngram=3), prompt, max_new_tokens=48, k=4),
}
for name, gen in runs.items():
    assert gen.token_ids() == baseline.token_ids(), name  # lossless: the very same tokens
    print(f"--- {name}: identical to the baseline, {gen.stats['steps']} target forwards instead of {baseline.stats['steps']}")
print(runs["model drafter"].outputs[0])'''),
    ("md", "## Speedup\nOn a busy laptop CPU the numbers are noisy; `mmspec bench --suite text` measures properly (warm-up, repeats)."),
    ("code", PLOT + '''

plot_speedup({
    "autoregressive": lambda: mmspec.autoregressive(target, prompt, max_new_tokens=48),
    "model drafter": lambda: mmspec.generate(target, mmspec.ModelDrafter(draft), prompt, max_new_tokens=48, k=4),
    "prompt lookup": lambda: mmspec.generate(target, mmspec.PromptLookupDrafter(), prompt, max_new_tokens=48, k=4),
})'''),
    ("md", """## Sampling
At temperature > 0 the **speculative** rule (rejection sampling) keeps the target's distribution exactly;
**reproducible** additionally returns the very same sample as autoregressive decoding with the same seed."""),
    ("code", '''hot = mmspec.Sampling(temperature=1.0)
ref = mmspec.autoregressive(target, prompt, max_new_tokens=32, rule=mmspec.accept.reproducible, sampling=hot, seed=1)
spec = mmspec.generate(target, mmspec.ModelDrafter(draft), prompt, max_new_tokens=32, k=4,
                       rule=mmspec.accept.reproducible, sampling=hot, seed=1)
print(spec.outputs[0])
print("same sample as autoregressive:", spec.token_ids() == ref.token_ids())'''),
]

IMAGE = [
    ("md", """# Speculative decoding for image tokens

An autoregressive image model writes a grid of VQ codes one by one (here 8 x 8 codes -> a 32 x 32 image
of a coloured shape, class-conditional with classifier-free guidance). **Jacobi decoding** guesses a
window of future codes and refines them with the target's own predictions; **Speculative Jacobi
Decoding (SJD)** accepts sampled guesses with the speculative rule, so sampling stays lossless.
**LANTERN** relaxes acceptance to nearby codes (lossy, with a bound)."""),
    ("code", SETUP + '''
import mmspec.image
from IPython.display import display
from mmspec.modalities import Models

models = Models()  # yours to keep: every generate call below reuses the models it loaded

def show(images, scale=4):
    for im in images:
        display(im.resize((im.width * scale, im.height * scale), 0))'''),
    ("md", "## Baseline: autoregressive sampling (temperature 1)"),
    ("code", '''baseline = mmspec.image.generate("red ring", "none", "speculative", temperature=1.0, seed=0, models=models)
show(baseline.outputs)
print(baseline.stats["steps"], "target forwards,", round(baseline.stats["wall_s"], 2), "s")'''),
    ("md", "## SJD and Jacobi (greedy)"),
    ("code", '''runs = {
    "sjd (init random)": mmspec.image.generate("red ring", "jacobi", "speculative", temperature=1.0, seed=0, models=models),
    "sjd (init left)": mmspec.image.generate("red ring", "jacobi", "speculative", temperature=1.0, init="left",
                                         seed=0, models=models),
    "jacobi (greedy)": mmspec.image.generate("red ring", "jacobi", "greedy", seed=0, models=models),
}
for name, gen in runs.items():
    print(name, "-", gen.stats["steps"], "target forwards")
    show(gen.outputs)'''),
    ("md", "## Speedup"),
    ("code", PLOT + '''

plot_speedup({
    "autoregressive": lambda: mmspec.image.generate("red ring", "none", "speculative", temperature=1.0, seed=0, models=models),
    "sjd (init random)": lambda: mmspec.image.generate("red ring", "jacobi", "speculative", temperature=1.0, seed=0, models=models),
    "sjd (init left)": lambda: mmspec.image.generate("red ring", "jacobi", "speculative", temperature=1.0,
                                                     init="left", seed=0, models=models),
})'''),
    ("md", "## Several classes in one batch"),
    ("code", '''gen = mmspec.image.generate(["blue square", "green triangle", "yellow cross"], "jacobi", "speculative",
                            temperature=1.0, seed=3, models=models)
show(gen.outputs)'''),
]

SPEECH = [
    ("md", """# Speculative decoding for speech codec tokens

A codec language model writes **frames** of K = 4 codes (one per codec codebook, delayed MusicGen-style)
that a neural codec turns into a waveform. The same loop drafts several frames and verifies them in one
target forward: with a small draft **model**, or with the training-free **codec lookup** drafter that
guesses each codebook from its own history. We sample at temperature 1 with the **reproducible** rule,
so every method returns the same audio as the baseline with the same seed."""),
    ("code", SETUP + '''
from IPython.display import Audio, display
from mmspec.speech import CodecLookupDrafter, SpeechTarget

target = SpeechTarget.from_pretrained("zoo:speech")
draft = SpeechTarget.from_pretrained("zoo:speech-draft")
text = "Hello world."
options = dict(max_new_tokens=100, k=4, rule=mmspec.accept.reproducible,
               sampling=mmspec.Sampling(temperature=1.0), seed=0)'''),
    ("md", "## Baseline"),
    ("code", '''baseline = mmspec.autoregressive(target, text, **options)
out = baseline.outputs[0]  # an mmspec Audio: waveform and sample rate
print(f"{out.seconds:.2f} s of audio in {baseline.stats['wall_s']:.2f} s")
print("saved", baseline.save("hello.wav"))  # 16-bit mono WAV
display(Audio(out.numpy(), rate=out.sample_rate))'''),
    ("md", "## Draft model and codec lookup"),
    ("code", '''runs = {
    "model drafter": mmspec.generate(target, mmspec.ModelDrafter(draft), text, **options),
    "codec lookup": mmspec.generate(target, CodecLookupDrafter(), text, **options),
}
for name, gen in runs.items():
    print(name, "- same frames as the baseline:", gen.token_ids() == baseline.token_ids())
    display(Audio(gen.outputs[0].numpy(), rate=gen.outputs[0].sample_rate))'''),
    ("md", "## Speedup\nTiny models on a CPU gain little: a verify forward over 5 frames costs more than one over 1. On a GPU the forward cost is flat in the number of frames, which is where the accepted length pays."),
    ("code", PLOT + '''

plot_speedup({
    "autoregressive": lambda: mmspec.autoregressive(target, text, **options),
    "model drafter": lambda: mmspec.generate(target, mmspec.ModelDrafter(draft), text, **options),
    "codec lookup": lambda: mmspec.generate(target, CodecLookupDrafter(), text, **options),
})'''),
]

NEW_DRAFTER = [
    ("md", """# Writing a new drafter

A drafter is any object with three methods and one declaration:

* `start(target, sampler, prompt, max_new_tokens)`: called once after the target's prefill, with the run's budget (`target.prompt_frames()` gives each row's prompt frames `[L, K]`);
* `propose(last, k) -> Draft`: guess up to `k` frames after `last` (`[B, 1, K]`); return `Draft(tokens=[B, D, K])`
  (add `probs=[B, D, K, V]` only if you sampled the guesses);
* `observe(step, target_logits)`: see what the step committed (`step.frames`, `[B, n, K]`, PAD = -1 after a row's end);
* `wants_hidden`: `False` (only a self-drafter, which reads the target's own hidden state, says `True`).

The loop and the accept rule do the rest. Whatever the drafter guesses, the **greedy** rule keeps the
output identical to autoregressive decoding: a bad drafter is only slow, never wrong. Below: a
**bigram** drafter that remembers, for every token, which token followed it last time (in the prompt
or in the text generated so far) and chains those guesses."""),
    ("code", SETUP + '''
from mmspec import Draft
from mmspec.text import TextTarget

target = TextTarget.from_pretrained("zoo:code-target")'''),
    ("code", '''class BigramDrafter:
    """Guess the token that followed the current token most recently; chain k guesses."""

    wants_hidden = False  # it reads no hidden state of the target (only self-drafters do)

    def start(self, target, sampler, prompt, max_new_tokens):
        self.next = [{} for _ in target.prompt_frames()]  # per row: token -> following token
        self.prev = []
        for table, frames in zip(self.next, target.prompt_frames()):
            ids = frames[:, 0].tolist()  # [L] (text has K = 1)
            table.update(zip(ids[:-1], ids[1:]))
            self.prev.append(ids[-1] if ids else None)

    def observe(self, step, target_logits):
        for b, table in enumerate(self.next):
            for t in step.frames[b, :, 0].tolist():  # committed ids of row b
                if t < 0:
                    break  # PAD after the row's end
                if self.prev[b] is not None:
                    table[self.prev[b]] = t
                self.prev[b] = t

    def propose(self, last, k):
        rows = []
        for b, table in enumerate(self.next):
            guess, t = [], int(last[b, 0, 0])
            for _ in range(k):
                t = table.get(t, t)  # unknown token: guess a repeat
                guess.append(t)
            rows.append(guess)
        return Draft(tokens=torch.tensor(rows, device=last.device)[..., None])  # [B, k, 1]'''),
    ("md", "## Lossless with the greedy rule"),
    ("code", '''prompt = ("def add(a, b):\\n    return a + b\\n\\n\\ndef sub(a, b):\\n    return a - b\\n\\n\\n"
          "def mul(a, b):\\n    return a * b\\n\\n\\ndef div(a, b):\\n")
baseline = mmspec.autoregressive(target, prompt, max_new_tokens=48)
mine = mmspec.generate(target, BigramDrafter(), prompt, max_new_tokens=48, k=4, rule=mmspec.accept.greedy)
assert mine.token_ids() == baseline.token_ids()
print(prompt + mine.outputs[0])
print("identical to autoregressive; target forwards:", mine.stats["steps"], "vs", baseline.stats["steps"])'''),
    ("md", "It also works on a batch of prompts (rows stay aligned: the loop commits the batch minimum)."),
    ("code", '''prompts = [prompt, "class Stack:\\n    def __init__(self):\\n        self.items = []\\n\\n    def push(self, x):\\n"]
batch_base = mmspec.autoregressive(target, prompts, max_new_tokens=24)
batch_mine = mmspec.generate(target, BigramDrafter(), prompts, max_new_tokens=24, k=4)
assert batch_mine.token_ids() == batch_base.token_ids()
print("batch of", len(prompts), "identical")'''),
    ("md", "## Measure it against the built-in prompt-lookup drafter"),
    ("code", PLOT + '''

plot_speedup({
    "autoregressive": lambda: mmspec.autoregressive(target, prompt, max_new_tokens=48),
    "bigram (this notebook)": lambda: mmspec.generate(target, BigramDrafter(), prompt, max_new_tokens=48, k=4),
    "prompt lookup": lambda: mmspec.generate(target, mmspec.PromptLookupDrafter(), prompt, max_new_tokens=48, k=4),
})'''),
]

HEADS = [
    ("md", """# Self-drafting: train heads for a target, then race them against a draft model

A separate draft model knows nothing of the target's state. A **self-drafter** reads the target's own last
hidden state, which the verify forward computes anyway: **Medusa** heads guess several tokens ahead from it
in one shot, and an **EAGLE** layer (one decoder layer over the target's features and the next token's
embedding) predicts the target's next feature and reads tokens through the target's frozen output head.
Output stays exact: the target still verifies every token.

This notebook trains an EAGLE layer for the zoo's code model for one minute on this CPU, then compares it
with the zoo's own heads (`zoo:code-heads`, trained much longer) and with the separate draft model."""),
    ("code", SETUP + '''
import json
from mmspec.text import TextTarget
from mmspec.heads import load_heads, train

target = TextTarget.from_pretrained("zoo:code-target")
draft = TextTarget.from_pretrained("zoo:code-draft")
prompt = "import os\\n\\n\\ndef list_files(path):\\n    \\"\\"\\"Return the names of the files in path.\\"\\"\\"\\n"'''),
    ("md", """## Train an EAGLE layer for a minute
`mmspec heads train` caches the frozen target's hidden states on a corpus (by default the Python standard
library's sources outside the zoo's held-out files), then distils the layer: it regresses the target's
next feature and matches the target's next-token distribution. The same command works for any Hugging Face
causal LM and for the zoo's image and speech targets (which learn from the target's own samples)."""),
    ("code", '''folder = train("zoo:code-target", "eagle", "my-heads", time_budget=60, max_tokens=60_000, device="cpu")
print(json.dumps(json.loads((folder / "config.json").read_text())["training"], indent=1))'''),
    ("md", "## Same greedy output, fewer target forwards"),
    ("code", '''baseline = mmspec.autoregressive(target, prompt, max_new_tokens=48)
drafters = {
    "draft model": lambda: mmspec.ModelDrafter(draft),
    "my heads (1 min)": lambda: load_heads("my-heads", target),
    "zoo heads": lambda: load_heads("zoo:code-heads", target),
    "zoo heads + prompt lookup": lambda: mmspec.MixedDrafter(
        [load_heads("zoo:code-heads", target, tree=6), mmspec.PromptLookupDrafter(tree=6)], nodes=10),
}
for name, make in drafters.items():
    gen = mmspec.generate(target, make(), prompt, max_new_tokens=48, k=5)
    assert gen.token_ids() == baseline.token_ids(), name  # lossless: the very same tokens
    print(f"{name:28} {gen.stats['steps']:3d} target forwards for 48 tokens, mean accepted {gen.stats['mean_accepted']:.2f}")'''),
    ("md", "## Speedup on this CPU\n`mmspec bench --suite text` measures properly on the 20 held-out prompts."),
    ("code", PLOT + '''

plot_speedup({"autoregressive": lambda: mmspec.autoregressive(target, prompt, max_new_tokens=48),
              **{name: (lambda make=make: mmspec.generate(target, make(), prompt, max_new_tokens=48, k=5))
                 for name, make in drafters.items()}})'''),
]

NOTEBOOKS = {"01_text.ipynb": TEXT, "02_image.ipynb": IMAGE, "03_speech.ipynb": SPEECH, "04_new_drafter.ipynb": NEW_DRAFTER,
             "05_heads.ipynb": HEADS}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives the same files
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), os.path.join(HERE, name))
        print("wrote", name)


if __name__ == "__main__":
    main()
