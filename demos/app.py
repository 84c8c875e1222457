"""The mmspec web demo: the baseline and up to three speculative methods side by side, per modality.

``mmspec demo`` (or ``python demos/app.py``) starts a Gradio app on 127.0.0.1. Each tab drives one
modality only through its modality interface (``mmspec.<modality>.api``) and the core
(``mmspec.stream``, ``mmspec.methods.make_drafter``, ``mmspec.accept``): no algorithm lives here. One
Run decodes the baseline, then each method, with the same seed, streaming every column as its steps
arrive; the wall time counts only the library's decode steps (not the UI's partial rendering).
"""
from __future__ import annotations

import argparse
import importlib
import threading
import time
from dataclasses import dataclass, field

import torch

from mmspec.drafters import NAMES as DRAFTERS
from mmspec.loop import stream, synchronizer
from mmspec.methods import is_lossless, make_drafter, make_rule, method_label, rule_names
from mmspec.types import PAD, Generation, Sampling, stats_of

MAX_PROMPT_CHARS = 500  # server-side limits: prompt length and new tokens (frames) per column
MAX_NEW = {"text": 256, "image": 1024, "speech": 400}
UI_EVERY_S = 0.4  # stream a column to the browser at most this often while it decodes
COLUMNS = 4  # the baseline + three methods
OFF = "off"
AUTO = "auto"
DRAFT_COLOR = "#86efac"
STOPPED = "**Stopped.** Press Run to start again."
_STOPS: dict = {}  # (session, tab) -> threading.Event of the run in progress
_MODEL_LOCK = threading.Lock()  # cached models are shared: one decode step at a time


@dataclass
class TabSpec:
    """What one modality tab shows by default (the zoo models come from its api module)."""

    name: str
    title: str
    methods: list[tuple[str, str]]  # up to three (drafter, rule) pairs
    init: str = "random"
    k: int = 4
    temperature: float = 0.0
    guidance: float | None = None  # image only: None hides the slider
    notes: str = ""


TABS = {
    "text": TabSpec("text", "Text", [("prompt-lookup", AUTO), ("model", AUTO), ("jacobi", AUTO)],
                    notes="Code LM from the offline zoo. Green tokens came from accepted drafts."),
    "image": TabSpec("image", "Image", [("jacobi", AUTO), ("model", AUTO), ("lookahead", AUTO)], init="left",
                     guidance=2.0, notes="Class-conditional image-token model (8x8 VQ codes -> 32x32 pixels)."),
    "speech": TabSpec("speech", "Speech", [("jacobi", AUTO), ("model", AUTO), ("prompt-lookup", AUTO)],
                      init="codec-lookup", notes="Codec LM with 4 codebooks (50 frames/s, 16 kHz)."),
}


# -- modalities and models --------------------------------------------------------------------------
def modality_api(name: str):
    """The modality interface module, or raise ImportError with the reason it is unavailable."""
    return importlib.import_module(f"mmspec.{name}.api")


def unavailable_reason(name: str) -> str | None:
    try:
        modality_api(name)
    except Exception as err:  # noqa: BLE001 - any import failure makes the tab unavailable, with its reason
        return f"{type(err).__name__}: {err}"
    return None


def modality_options(api, **overrides) -> dict:
    """``api.options`` over the modality's own argument defaults, with the knobs the tab sets."""
    parser = argparse.ArgumentParser(add_help=False)
    api.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        if hasattr(args, key) and value is not None:
            setattr(args, key, value)
    return api.options(args)


_MODELS: dict = {}


def load_model(modality: str, name: str, opts: dict):
    """``api.load`` once per (modality, name, options); a warm-up of two frames hides first-call costs."""
    key = (modality, name, tuple(sorted((k, repr(v)) for k, v in opts.items())))
    if key not in _MODELS:
        api = modality_api(modality)
        target = api.load(name, **opts)
        try:  # 1. warm up (lazy allocations, first-kernel costs) so timings compare like with like
            for _ in decode(target, None, api.prompts(api.DEFAULT_PROMPT, 1, **opts), max_new_tokens=2):
                pass
        except Exception:  # noqa: BLE001 - a model with other prompts (e.g. Janus) just skips the warm-up
            pass
        _MODELS[key] = target
    return _MODELS[key]


def prompt_choices(modality: str) -> list[str]:
    """Class names (image) or nothing: read from the default target when the api does not list them."""
    api = modality_api(modality)
    names = getattr(api, "CLASS_NAMES", None)
    if names:
        return list(names)
    if modality != "image":
        return []
    try:
        target = load_model(modality, api.DEFAULT_TARGET, modality_options(api))
    except Exception:  # noqa: BLE001 - no dropdown then; a free-text prompt still works
        return []
    return list(getattr(target, "class_names", []) or [])


def rule_choices(api) -> list[str]:
    return [AUTO, *rule_names(api)]


def init_choices(api) -> list[str]:
    return ["random", "pad", "repeat", *api.INITS]


# -- one column ------------------------------------------------------------------------------------
@dataclass
class Column:
    """One method's run as it streams: committed steps, decode time, and what the UI shows."""

    label: str
    rule: str
    steps: list = field(default_factory=list)
    wall_s: float = 0.0
    output: object = None
    gen: Generation | None = None
    done: bool = False

    def generation(self, target) -> Generation:
        tokens = torch.cat([s.frames for s in self.steps], dim=1)  # [B, T, K]
        lengths = (tokens[..., 0] != PAD).sum(dim=1)  # [B]
        return Generation(tokens=tokens[:, : int(lengths.max())], lengths=lengths, steps=self.steps, wall_s=self.wall_s)


def _resolve_rule(rule: str, temperature: float) -> str:
    return ("greedy" if temperature == 0 else "speculative") if rule == AUTO else rule


def drafter_choices(api) -> list[str]:
    """The core's drafters and the modality's own (``api.DRAFTERS``), without ``none`` (the baseline)."""
    return [d for d in DRAFTERS if d != "none"] + list(getattr(api, "DRAFTERS", {}))


def build_drafter(api, name: str, *, target, draft, init: str, opts: dict):
    return make_drafter(name, draft=draft, init=init, ngram=3, inits=api.INITS, extra=getattr(api, "DRAFTERS", None),
                        target=target, options=opts)


def run_column(col: Column, target, drafter, prompt, *, rule, sampling, k, max_new, seed):
    """Decode step by step, timing only the library; yields after each step (the caller throttles UI)."""
    sync = synchronizer(target.device)
    steps = decode(target, drafter, prompt, max_new_tokens=max_new, k=k, rule=rule, sampling=sampling, seed=seed)
    while True:
        sync()
        t0 = time.perf_counter()
        with _MODEL_LOCK:  # a cancelled run's step still in flight must finish before the next run's
            step = next(steps, None)
        sync()
        col.wall_s += time.perf_counter() - t0
        if step is None:
            break
        col.steps.append(step)
        yield col
    col.gen = col.generation(target)
    col.gen.outputs = target.decode(col.gen.tokens, col.gen.lengths)
    col.done = True
    yield col


# -- rendering -------------------------------------------------------------------------------------
def text_segments(target, col: Column) -> list[tuple[str, str | None]]:
    """Row 0's text split into runs of accepted-draft tokens and target tokens (decoded prefix by prefix)."""
    if not col.steps:
        return []
    frames = torch.cat([s.frames for s in col.steps], dim=1)[:1]  # [1, T, K]
    drafted = torch.cat([s.from_draft for s in col.steps], dim=1)[0].tolist()  # [T]
    n = int((frames[0, :, 0] != PAD).sum())
    segments, prev, start = [], "", 0
    for i in range(1, n + 1):
        if i == n or drafted[i] != drafted[start]:
            text = target.decode(frames[:, :i], torch.tensor([i]))[0]
            segments.append((text[len(prev):], "accepted draft" if drafted[start] else None))
            prev, start = text, i
    return [s for s in segments if s[0]]


def render_output(modality: str, target, col: Column):
    """The column's output component value: highlighted text, an image, or (sample_rate, int16 audio)."""
    if modality == "text":
        return text_segments(target, col)
    if not col.done:
        if modality == "image" and col.steps:  # the partial grid (unfinished codes padded by the adapter)
            gen = col.generation(target)
            return _enlarged(target.decode(gen.tokens, gen.lengths)[0])
        return None
    out = col.gen.outputs[0]
    if modality == "image":
        return _enlarged(out)
    if modality == "speech":
        wav = out.detach().float().cpu().clamp(-1, 1)
        rate = int(getattr(out, "sample_rate", 0) or getattr(target, "sample_rate", 16000))
        return (rate, (wav * 32767).round().to(torch.int16).numpy())
    return out


def _enlarged(image, size: int = 192):
    """Small images (the zoo's are 32 x 32) scaled up with nearest neighbours, for display only."""
    if not hasattr(image, "resize") or min(image.size) >= size:
        return image
    factor = -(-size // min(image.size))
    return image.resize((image.size[0] * factor, image.size[1] * factor), resample=0)  # 0 = nearest


def stats_row(col: Column, base: Column | None, unit: str) -> dict:
    gen = col.gen if col.gen is not None else Generation(
        tokens=torch.zeros(1, 0, 1, dtype=torch.long), lengths=torch.tensor([sum(s.frames.shape[1] for s in col.steps)]),
        steps=col.steps, wall_s=col.wall_s)
    s = stats_of(gen)
    speedup = None  # throughput ratio: equals the wall-time ratio when both made the same number of frames
    if base is not None and base.done and s["tokens_per_s"] > 0:
        speedup = s["tokens_per_s"] / stats_of(base.gen)["tokens_per_s"]
    return {"method": col.label, unit: s["new_tokens"], "wall_s": s["wall_s"], f"{unit}/s": s["tokens_per_s"],
            "mean_accepted": s["mean_accepted"], "acceptance_rate": s["acceptance_rate"], "speedup": speedup,
            "per_step": s["accepted_per_step"]}


def stats_markdown(row: dict, unit: str, running: bool) -> str:
    speed = "—" if row["speedup"] is None else f"**{row['speedup']:.2f}x**"
    head = "_running…_  \n" if running else ""
    return (f"{head}wall **{row['wall_s']:.2f} s** · {row[unit]} {unit} · **{row[f'{unit}/s']:.1f}** {unit}/s  \n"
            f"mean accepted **{row['mean_accepted']:.2f}** · acceptance **{row['acceptance_rate']:.0%}** · "
            f"speedup {speed}")


def banner(api, col: Column, base: Column | None, greedy: bool) -> str:
    """Lossless or lossy, and whether the tokens equal the baseline's where they must (greedy exact)."""
    if base is None or col is base:
        return f"### {col.label}\nbaseline · one target forward per frame"
    kind = "lossless" if is_lossless(col.rule, api) else "LOSSY"
    if not col.done or not base.done:
        return f"### {col.label}\n{kind}"
    same = col.gen.token_ids() == base.gen.token_ids()
    if greedy or (col.rule == "reproducible" and base.rule == "reproducible"):
        verdict = "identical to baseline ✓" if same else ("differs from baseline ✗" if kind == "lossless"
                                                          else "differs from baseline (expected: lossy)")
    else:
        verdict = "same tokens as baseline" if same else "sampled: same distribution, different draw"
    return f"### {col.label}\n**{kind}** · {verdict}"


def make_plot(rows: list[dict]):
    """Speedup bars and accepted frames per step over the run, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 2]})
    names = [r["method"] for r in rows]
    speed = [r["speedup"] or 0.0 for r in rows]
    colors = ["#9ca3af"] + ["#16a34a" if s >= 1 else "#dc2626" for s in speed[1:]]
    ax1.barh(names[::-1], speed[::-1], color=colors[::-1])
    ax1.axvline(1.0, color="#374151", lw=0.8, ls="--")
    ax1.set_xlabel("speedup over baseline")
    for r in rows:
        per_step = r["per_step"]
        ax2.plot(range(1, len(per_step) + 1), per_step, marker=".", lw=1, label=r["method"])
    ax2.set_xlabel("step")
    ax2.set_ylabel("frames committed")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    plt.close(fig)
    return fig


# -- the tab's run function ------------------------------------------------------------------------
def _check_inputs(modality: str, prompt, max_new, k, top_k, top_p, seed) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt)} characters; this server allows {MAX_PROMPT_CHARS}")
    if not 1 <= int(max_new) <= MAX_NEW[modality]:
        raise ValueError(f"max new tokens must be between 1 and {MAX_NEW[modality]} on this server, got {max_new}")
    if int(k) < 1 or int(k) > 32:
        raise ValueError(f"k (drafted frames per step) must be between 1 and 32, got {k}")
    if seed is None:
        raise ValueError("seed must be an integer")


def _methods(api, picks: list[tuple[str, str]], temperature: float) -> list[tuple[str, str]]:
    methods = []
    for drafter, rule in picks:
        if not drafter or drafter == OFF:
            continue
        if drafter not in drafter_choices(api):
            raise ValueError(f"unknown drafter {drafter!r}; allowed: {', '.join(drafter_choices(api))}")
        rule = _resolve_rule(rule or AUTO, temperature)
        if rule == "greedy" and temperature > 0:
            raise ValueError(f"rule 'greedy' needs temperature 0 (got {temperature}); pick auto, speculative, "
                             "reproducible or typical")
        methods.append((drafter, rule))
    return methods


def _baseline_rule(methods, temperature: float) -> str:
    if temperature == 0:
        return "greedy"
    return "reproducible" if any(r == "reproducible" for _, r in methods) else "speculative"


def _outputs(modality, target, api, status, cols, base_rule_greedy, unit, final=False):
    """The tuple the UI expects: status, table, plot, then (header, output, stats) per column."""
    base = cols[0] if cols else None
    rows = [stats_row(c, base, unit) for c in cols if c.steps]
    table = [[r["method"], r[unit], round(r["wall_s"], 3), round(r[f"{unit}/s"], 1), round(r["mean_accepted"], 2),
              round(r["acceptance_rate"], 2), "—" if r["speedup"] is None else round(r["speedup"], 2)] for r in rows]
    out = [status, table, make_plot(rows) if final and rows else None]
    for i in range(COLUMNS):
        if i < len(cols):
            c = cols[i]
            row = stats_row(c, base, unit) if c.steps else None
            out += [banner(api, c, base, base_rule_greedy), render_output(modality, target, c),
                    stats_markdown(row, unit, not c.done) if row else "_waiting…_"]
        else:
            out += ["", None, ""]
    return tuple(out)


def run_tab(modality: str, prompt, target_name, draft_name, d1, r1, d2, r2, d3, r3, k, init, temperature, top_k,
            top_p, guidance, seed, max_new, progress=None, stop: threading.Event | None = None):
    """Generator behind one tab's Run: yields the UI tuple (see ``_outputs``) as the columns stream.

    Bad input never raises: it yields a status line starting with "Error:" and stops. ``stop`` (set by the
    Stop button) ends the run after the current step, besides Gradio's own cancel.
    """
    unit = _unit(modality)
    empty = _outputs(modality, None, None, "", [], True, unit)
    try:
        api = modality_api(modality)
    except Exception as err:  # noqa: BLE001
        yield (f"**Error:** {modality} is not available: {err}",) + empty[1:]
        return
    try:
        # 1. Validate everything before loading a model.
        _check_inputs(modality, prompt, max_new, k, top_k, top_p, seed)
        temperature = float(temperature or 0.0)
        sampling = Sampling(temperature=temperature, top_k=int(top_k) if top_k else None,
                            top_p=float(top_p) if top_p and float(top_p) < 1 else None)
        methods = _methods(api, [(d1, r1), (d2, r2), (d3, r3)], temperature)
        opts = modality_options(api, cfg=guidance if modality == "image" else None)
        prompt_in = api.prompts(prompt.strip() if modality == "image" else prompt, 1, **opts)
        # 2. Load (cached) the target, and the draft model only when a method needs it.
        yield (f"Loading **{target_name}**…",) + empty[1:]
        target = load_model(modality, (target_name or api.DEFAULT_TARGET).strip(), opts)
        draft = None
        if any(d == "model" for d, _ in methods):
            draft = load_model(modality, (draft_name or api.DEFAULT_DRAFT).strip(), opts)
            if hasattr(target, "check_draft"):
                target.check_draft(draft)
        base_rule = _baseline_rule(methods, temperature)
        plan = [("none", base_rule)] + methods
        for drafter, rule in plan:  # names and rules before the long part
            build_drafter(api, drafter, target=target, draft=draft, init=init, opts=opts)
            make_rule(rule, api, target, opts)
        yield from _run_plan(modality, api, target, draft, plan, prompt_in, opts, sampling, int(k), init,
                             int(max_new), int(seed), unit, progress, stop)
    except (ValueError, OSError, KeyError) as err:  # bad input: names, paths, values
        msg = str(err).strip().strip('"') or type(err).__name__
        _warn(msg)
        yield (f"**Error:** {msg}",) + empty[1:]
    except Exception as err:  # noqa: BLE001 - e.g. a model that does not fit the adapter: say so, keep serving
        msg = f"{type(err).__name__}: {err}"
        _warn(msg)
        yield (f"**Error:** {msg}",) + empty[1:]


def _run_plan(modality, api, target, draft, plan, prompt_in, opts, sampling, k, init, max_new, seed, unit, progress,
              stop=None):
    """3. Baseline, then each method, same seed; stream each column; 4. final table, plot and banners."""
    cols: list[Column] = []
    greedy = sampling.greedy
    for i, (drafter_name, rule_name) in enumerate(plan):
        col = Column(label=method_label(drafter_name, rule_name), rule=rule_name)
        cols.append(col)
        drafter = build_drafter(api, drafter_name, target=target, draft=draft, init=init, opts=opts)
        rule = make_rule(rule_name, api, target, opts)
        last = 0.0
        for _ in run_column(col, target, drafter, prompt_in, rule=rule, sampling=sampling, k=k, max_new=max_new,
                            seed=seed):
            made = sum(s.frames.shape[1] for s in col.steps)
            if stop is not None and stop.is_set():
                yield _outputs(modality, target, api, STOPPED, cols, greedy, unit)
                return
            if progress is not None:
                progress((i + min(made / max_new, 1.0)) / len(plan), desc=f"{col.label}: {made}/{max_new} {unit}")
            if col.done or time.perf_counter() - last > UI_EVERY_S:
                last = time.perf_counter()
                status = f"Running {i + 1}/{len(plan)}: **{col.label}** — {made}/{max_new} {unit}"
                yield _outputs(modality, target, api, status, cols, greedy, unit)
    rows = [stats_row(c, cols[0], unit) for c in cols[1:]]
    summary = ", ".join(f"{r['method']} **{r['speedup']:.2f}x**" for r in rows if r["speedup"])
    device = f"{torch.device(target.device).type}, {torch.get_num_threads()} threads"
    status = f"Done on {device} (seed {seed}). Speedup over baseline: {summary or '—'}"
    yield _outputs(modality, target, api, status, cols, greedy, unit, final=True)


def _warn(msg: str) -> None:
    """A toast in the browser; outside a request (tests, scripts) Gradio only logs it."""
    try:
        import gradio as gr

        gr.Warning(msg)
    except Exception:  # noqa: BLE001
        pass


# -- the UI ----------------------------------------------------------------------------------------
CSS = """
.mm-col { min-width: 220px; }
.mm-stats p { font-size: 0.9em; margin: 0; }
.mm-head h3 { margin: 0 0 2px 0; }
footer { display: none !important; }
"""


def _controls(spec: TabSpec, api):
    """Prompt, models, three method slots and the knobs; returns (inputs in run_tab's order, run, stop)."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=3):
            choices = prompt_choices(spec.name)
            if choices:
                prompt = gr.Dropdown(choices, value=api.DEFAULT_PROMPT, label="Class", allow_custom_value=True)
            else:
                prompt = gr.Textbox(value=api.DEFAULT_PROMPT, label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS)
            with gr.Row():
                target = gr.Textbox(value=api.DEFAULT_TARGET, label="Target model (zoo:NAME, HF name or path)")
                draft = gr.Textbox(value=api.DEFAULT_DRAFT, label="Draft model (for the 'model' drafter)")
            picks = []
            for j in range(3):
                d, r = spec.methods[j] if j < len(spec.methods) else (OFF, AUTO)
                with gr.Row():
                    picks.append(gr.Dropdown([OFF, *drafter_choices(api)], value=d, label=f"Method {j + 1}: drafter"))
                    picks.append(gr.Dropdown(rule_choices(api), value=r, label="accept rule (auto: greedy at T=0)"))
        with gr.Column(scale=2):
            with gr.Row():
                k = gr.Slider(1, 16, value=spec.k, step=1, label="k / window")
                init = gr.Dropdown(init_choices(api), value=spec.init, label="Jacobi init")
            with gr.Row():
                temperature = gr.Slider(0, 2, value=spec.temperature, step=0.05, label="temperature (0 = greedy)")
                top_k = gr.Number(value=0, precision=0, minimum=0, label="top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p (1 = off)")
            with gr.Row():
                guidance = gr.Slider(0, 8, value=spec.guidance or 1.0, step=0.25, label="guidance (CFG)",
                                     visible=spec.guidance is not None)
                seed = gr.Number(value=0, precision=0, label="seed")
                max_new = gr.Slider(1, MAX_NEW[spec.name], value=min(api.DEFAULT_MAX_NEW, MAX_NEW[spec.name]), step=1,
                                    label=f"max new {_unit(spec.name)}", elem_id=f"maxnew-{spec.name}")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id=f"run-{spec.name}")
                stop = gr.Button("Stop", variant="stop", elem_id=f"stop-{spec.name}")
    inputs = [prompt, target, draft, *picks, k, init, temperature, top_k, top_p, guidance, seed, max_new]
    return inputs, run, stop


def _results(spec: TabSpec) -> list:
    """Status line, then per column a header, the output and its stats, then the table and the plot."""
    import gradio as gr

    status = gr.Markdown(elem_id=f"status-{spec.name}")
    cols = []
    with gr.Row(equal_height=False):
        for c in range(COLUMNS):
            with gr.Column(elem_classes=["mm-col"], min_width=220):
                head = gr.Markdown(elem_classes=["mm-head"], elem_id=f"head-{spec.name}-{c}")
                out_id = f"out-{spec.name}-{c}"
                if spec.name == "text":
                    view = gr.HighlightedText(label="output", show_legend=False, show_inline_category=False,
                                              combine_adjacent=True, color_map={"accepted draft": DRAFT_COLOR},
                                              elem_id=out_id)
                elif spec.name == "image":
                    view = gr.Image(label="output", type="pil", height=200, elem_id=out_id)
                else:
                    view = gr.Audio(label="output", type="numpy", elem_id=out_id)
                stats = gr.Markdown(elem_classes=["mm-stats"], elem_id=f"stats-{spec.name}-{c}")
                cols += [head, view, stats]
    unit = _unit(spec.name)
    table = gr.Dataframe(headers=["method", unit, "wall s", f"{unit}/s", "mean accepted", "acceptance", "speedup"],
                         label="comparison", interactive=False, elem_id=f"table-{spec.name}")
    plot = gr.Plot(label="speedup and frames committed per step", elem_id=f"plot-{spec.name}")
    return [status, table, plot, *cols]


def _tab(spec: TabSpec) -> None:
    """One modality tab: controls, results, and the Run (streaming) / Stop (cancel) events."""
    import gradio as gr

    reason = unavailable_reason(spec.name)
    if reason is not None:
        gr.Markdown(f"**{spec.title} is not available:** `{reason}`")
        return
    api = modality_api(spec.name)
    gr.Markdown(spec.notes)
    inputs, run, stop = _controls(spec, api)
    outputs = _results(spec)

    def go(prompt, target, draft, d1, r1, d2, r2, d3, r3, k, init, temperature, top_k, top_p, guidance, seed, max_new,
           request: gr.Request, progress=gr.Progress()):
        stop = _STOPS[_stop_key(request, spec.name)] = threading.Event()
        yield from run_tab(spec.name, prompt, target, draft, d1, r1, d2, r2, d3, r3, k, init, temperature, top_k, top_p,
                           guidance, seed, max_new, progress=progress, stop=stop)

    def stopped(request: gr.Request) -> str:
        """Stop: flag the run, which ends after its current step with a "Stopped" status. Cooperative on
        purpose: with Gradio 6.31, ``cancels=`` abandons the generator mid-step and the next run's final
        update was lost in the browser test; the flag ends the run cleanly and leaves the models consistent."""
        key = _stop_key(request, spec.name)
        stop = _STOPS.pop(key, None)
        if stop is not None:
            stop.set()
        time.sleep(1.0)
        return gr.skip() if key in _STOPS else STOPPED  # a new run started meanwhile: leave its status alone

    run.click(go, inputs, outputs, show_progress="minimal", show_progress_on=[outputs[0]])
    stop.click(stopped, None, [outputs[0]], queue=False)  # cooperative: see stopped()


def _stop_key(request, modality: str):
    return (getattr(request, "session_hash", None), modality)


def _unit(modality: str) -> str:
    return "frames" if modality == "speech" else "tokens"


def build_app():
    """The Blocks app (not launched): one tab per modality, each disabled with its reason if unavailable."""
    import gradio as gr

    with gr.Blocks(title="mmspec demo") as demo:
        gr.Markdown("# mmspec: speculative decoding for text, images and speech\n"
                    "Press **Run**: the baseline (plain decoding, one target forward per frame) runs first, then "
                    "each method with the same seed. Exact (lossless) methods must reproduce the baseline under "
                    "greedy decoding. Speedup = the method's frames per second over the baseline's (the wall-time ratio when "
                    "both made the same number of frames). Green text tokens came from accepted drafts.")
        with gr.Tabs():
            for spec in TABS.values():
                with gr.Tab(spec.title, id=spec.name):
                    _tab(spec)
    demo.queue(default_concurrency_limit=1)
    return demo


def main(args=None) -> int:
    """Launch on ``args.host:args.port`` (``args.share`` for a public link); ``args.threads`` sets torch threads."""
    if args is None or isinstance(args, list):
        args = _parser().parse_args(args)
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    demo = build_app()
    import gradio as gr

    demo.launch(server_name=getattr(args, "host", "127.0.0.1"), server_port=getattr(args, "port", 7860),
                share=getattr(args, "share", False), css=CSS, theme=gr.themes.Soft())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="mmspec Gradio demo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
