"""The mmspec web demo: the baseline and up to three speculative methods side by side, one tab per
registered modality (``mmspec.modalities.names()``).

``mmspec demo`` (or ``python demos/app.py``) starts a Gradio app on 127.0.0.1. Everything a tab shows
comes from its ``Modality`` and ``Modality.display``; the run itself is ``demos/runs.py`` and what the
server accepts (models, limits) ``demos/serving.py``. No algorithm lives here.
"""
from __future__ import annotations

import argparse
import threading
import time

import gradio as gr
import torch

from mmspec import methods, modalities
from mmspec.demos import views
from mmspec.demos.runs import run_tab
from mmspec.demos.serving import AUTO, MAX_ROUNDS, MAX_TREE, OFF, Inputs, Server, options

CSS = """
.mm-col { min-width: 220px; }
.mm-stats p { font-size: 0.9em; margin: 0; }
.mm-head h3 { margin: 0 0 2px 0; }
pre.mm-code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre;
              overflow-x: auto; font-size: 0.85em; line-height: 1.35; padding: 6px; margin: 0; }
pre.mm-code mark.mm-draft { background: #86efac; color: inherit; padding: 0; margin: 0; border-radius: 0; }
footer { display: none !important; }
"""
INTRO = ("# mmspec: speculative decoding side by side\n"
         "Press **Run**: the baseline (plain decoding, one target forward per frame) runs first, then each method "
         "with the same seed. Lossless methods must reproduce the baseline under greedy decoding. Speedup = the "
         "baseline's time over the method's, the median of the timed rounds that follow (min-max in brackets; "
         "\"within noise\" when that range holds 1.00x). Highlighted text came from accepted drafts.")


class Stops:
    """The Stop flag of each (session, tab) run in progress."""

    def __init__(self):
        self._events: dict = {}
        self._lock = threading.Lock()

    def start(self, key) -> threading.Event:
        with self._lock:
            event = self._events[key] = threading.Event()
        return event

    def stop(self, key) -> bool:
        """Flag the run; True if one was in progress."""
        with self._lock:
            event = self._events.pop(key, None)
        if event is not None:
            event.set()
        return event is not None

    def running(self, key) -> bool:
        with self._lock:
            return key in self._events


def _defaults(server: Server, mod) -> tuple[list, int, int]:
    """Prompt choices, and the max-new slider's limit and value, read from the loaded default target when
    the modality needs it (choices, or a length that is the target's own)."""
    display = mod.display
    if display.choices is None and mod.max_new_tokens is not None:
        return [], mod.max_new_limit, min(mod.max_new_tokens, mod.max_new_limit)
    target = server.load(mod, mod.default_target, options(mod, {}))
    limit = min(mod.max_new_limit, server.capacities[target])
    value = limit if mod.max_new_tokens is None else min(mod.max_new_tokens, limit)
    return (display.choices(target) if display.choices else []), limit, value


def _prompt_box(mod, choices: list):
    if choices:
        return gr.Dropdown(choices, value=mod.default_prompt, label="Prompt (class)", allow_custom_value=True,
                           elem_id=f"prompt-{mod.name}")
    return gr.Textbox(value=mod.default_prompt, label="Prompt", lines=3, elem_id=f"prompt-{mod.name}")


def _method_slots(mod) -> list:
    """Three (drafter, accept rule, tree nodes) slots, then one line per drafter on when it helps."""
    display, picks = mod.display, []
    drafters = [OFF, *[d for d in methods.drafter_names(mod) if d != "none"]]
    drafters += [d for d, _ in display.methods if d not in drafters]  # the tab's combinations (A|B, A+B)
    specs = methods.rule_specs(mod)
    rules = [AUTO, *specs]
    for j in range(3):
        d, r = display.methods[j] if j < len(display.methods) else (OFF, AUTO)
        with gr.Row():
            picks.append(gr.Dropdown(drafters, value=d, label=f"Method {j + 1}: drafter (or type A+B, A|B)",
                                     allow_custom_value=True, elem_id=f"drafter-{mod.name}-{j}"))
            picks.append(gr.Dropdown(rules, value=r, label="accept rule (auto: greedy at T=0)"))
            picks.append(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_TREE, label="tree nodes (0 = chain)",
                                   elem_id=f"tree-{mod.name}-{j}"))
    helps = "".join(f"- **{d}**: {line}\n" for d, line in display.helps.items())
    lossy = "".join(f"- rule **{n}** is LOSSY: {s.bound}\n" for n, s in specs.items() if not s.lossless)
    gr.Markdown(helps + lossy, elem_id=f"helps-{mod.name}")
    return picks


def _knobs(mod, limit: int, value: int) -> list:
    """k, init, sampling, seed, the modality's own knobs, then the max-new slider on a row of its own."""
    with gr.Row():
        k = gr.Slider(1, 16, value=mod.display.k, step=1, label="k / window")
        init = gr.Dropdown(methods.init_names(mod), value=mod.display.init, label="Jacobi init")
    with gr.Row():
        temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature (0 = greedy)")
        top_k = gr.Number(value=0, precision=0, minimum=0, label="top-k (0 = off)")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p (1 = off)")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="seed")
        rounds = gr.Slider(0, MAX_ROUNDS, value=2, step=1, label="timed rounds behind the speedup (0: the streamed run)")
        extra = [gr.Number(value=knob.value, minimum=knob.minimum, maximum=knob.maximum, step=knob.step,
                           label=knob.label) for knob in mod.display.knobs]
    max_new = gr.Slider(1, limit, value=value, step=1, label=f"max new {mod.unit} (up to {limit})",
                        elem_id=f"maxnew-{mod.name}")
    return [k, init, temperature, top_k, top_p, seed, rounds, max_new, *extra]


def _controls(server: Server, mod):
    """Prompt, models, method slots, knobs and examples; returns (inputs in ``inputs_of`` order, run, stop)."""
    choices, limit, value = _defaults(server, mod)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = _prompt_box(mod, choices)
            with gr.Row():
                served = ", ".join(server.served(mod)) if not server.allow_any else "any name or path"
                target = gr.Textbox(value=mod.default_target, label=f"Target model (served: {served})")
                draft = gr.Textbox(value=mod.default_draft, label="Draft model (for the 'model' drafter)")
            picks = _method_slots(mod)
        with gr.Column(scale=2):
            knobs = _knobs(mod, limit, value)
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id=f"run-{mod.name}")
                stop = gr.Button("Stop", variant="stop", elem_id=f"stop-{mod.name}")
    gr.Examples([[p] for p in mod.examples], [prompt], label="Prompts")
    if mod.display.examples:
        gr.Examples([[p, d] for p, d, _ in mod.display.examples], [prompt, picks[0]],
                    label="Where each method wins (sets method 1)",
                    example_labels=[f"{d}: {why}" for _, d, why in mod.display.examples])
    return [prompt, target, draft, *picks, *knobs], run, stop


def inputs_of(mod, values) -> Inputs:
    """The tab's component values (``_controls`` order) as ``Inputs``."""
    prompt, target, draft, *rest = values
    slots, (k, init, temperature, top_k, top_p, seed, rounds, max_new, *extra) = rest[:9], rest[9:]
    knobs = {knob.option: v for knob, v in zip(mod.display.knobs, extra)}
    picks = [tuple(slots[i: i + 3]) for i in range(0, 9, 3)]  # (drafter, rule, tree nodes) per slot
    return Inputs(prompt, target, draft, picks, k=k, init=init, temperature=temperature, top_k=top_k, top_p=top_p,
                  seed=seed, max_new=max_new, knobs=knobs, rounds=rounds)


def _results(mod) -> list:
    """Status line, table and plot, then per column a header, the output and its stats."""
    status = gr.Markdown(elem_id=f"status-{mod.name}")
    cols = []
    component = getattr(gr, mod.display.component)
    with gr.Row(equal_height=False):
        for c in range(views.COLUMNS):
            with gr.Column(elem_classes=["mm-col"], min_width=220):
                head = gr.Markdown(elem_classes=["mm-head"], elem_id=f"head-{mod.name}-{c}")
                view = component(label="output", elem_id=f"out-{mod.name}-{c}", **mod.display.component_options)
                stats = gr.Markdown(elem_classes=["mm-stats"], elem_id=f"stats-{mod.name}-{c}")
                cols += [head, view, stats]
    table = gr.Dataframe(headers=views.table_headers(mod.unit), label="comparison", interactive=False,
                         elem_id=f"table-{mod.name}")
    plot = gr.Plot(label="speedup and frames committed per step", elem_id=f"plot-{mod.name}")
    return [status, table, plot, *cols]


def _tab(server: Server, stops: Stops, name: str) -> None:
    """One modality tab: notes, controls, results, and the Run (streaming) / Stop events."""
    reason = modalities.unavailable(name)
    mod = None if reason else modalities.get(name)
    if mod is None or mod.display is None:
        gr.Markdown(f"**{name} is not available:** `{reason or 'it has no Display for the app'}`")
        return
    gr.Markdown(mod.notes)
    inputs, run, stop = _controls(server, mod)
    outputs = _results(mod)

    def go(values: dict, request: gr.Request, progress=gr.Progress()):
        """``values``: component -> value (the inputs are passed as a set, whatever the modality's knobs)."""
        flag = stops.start(_key(request, name))
        yield from run_tab(server, name, inputs_of(mod, [values[c] for c in inputs]), progress=progress, stop=flag)

    def stopped(request: gr.Request):
        """Flag the run, which ends after its current step and clears its "running" labels. Cooperative on
        purpose: Gradio's ``cancels=`` abandons the generator mid-step, and the next run's final update was
        lost in the browser test."""
        key = _key(request, name)
        if not stops.stop(key):
            return gr.skip()
        time.sleep(1.0)
        return gr.skip() if stops.running(key) else views.STOPPED  # a new run started meanwhile: leave it

    run.click(go, set(inputs), outputs, show_progress="minimal", show_progress_on=[outputs[0]])
    stop.click(stopped, None, [outputs[0]], queue=False)


def _key(request, name: str):
    return (getattr(request, "session_hash", None), name)


def build_app(server: Server | None = None):
    """The Blocks app (not launched): one tab per registered modality (disabled with its reason if unavailable)."""
    server = Server() if server is None else server
    stops = Stops()
    with gr.Blocks(title="mmspec demo") as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            for name in modalities.names():
                reason = modalities.unavailable(name)
                with gr.Tab(name.capitalize() if reason else modalities.get(name).title, id=name):
                    _tab(server, stops, name)
    demo.queue(default_concurrency_limit=1, max_size=server.queue_size)
    return demo


def main(args=None) -> int:
    """Launch on ``args.host:args.port`` (``args.share`` for a public link); ``args.threads`` sets torch
    threads; ``args.model`` (MODALITY=NAME_OR_PATH, repeatable) adds served models; ``args.allow_any_model``
    lets any name or path load (local use only)."""
    if args is None or isinstance(args, list):
        args = parser().parse_args(args)
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    demo = build_app(Server.from_args(args))
    demo.launch(server_name=getattr(args, "host", "127.0.0.1"), server_port=getattr(args, "port", 7860),
                share=getattr(args, "share", False), css=CSS, theme=gr.themes.Soft())
    return 0


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--allow-any-model`` (shared with ``mmspec demo``)."""
    p.add_argument("--model", action="append", default=[], metavar="MODALITY=NAME_OR_PATH",
                   help="also serve this model (repeatable); by default only each modality's zoo pair is served")
    p.add_argument("--allow-any-model", action="store_true",
                   help="let any folder path or hub id typed into the app load (local use only; off by default)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the fast path for every model (static cache + prepacked products; default: on where it "
                        "measured faster)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="mmspec Gradio demo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_serving_arguments(p)
    return p


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
