"""The Gradio app: one tab per registered modality, built from its ``Modality`` and ``Display``; each tab's
run streams outputs and stats for the zoo models; bad input yields a readable error line, never a change."""
from __future__ import annotations

import argparse
import html
import re
import warnings

import gradio as gr  # a hard dependency (pyproject): a broken install fails here instead of skipping
import pytest
import torch

from mmspec import modalities
from mmspec.demos import app, views
from mmspec.demos.runs import run_tab
from mmspec.demos.serving import AUTO, OFF, Inputs, Server
from mmspec.modalities import Display, Modality
from mmspec.testing import ToyTarget

HEAD, OUT, STATS = 3, 4, 5  # per column c: index + 3 * c in the yielded tuple
SERVER = Server()  # one per module: the zoo models load once


def run(modality, prompt=None, *, methods=None, max_new=6, init=None, temperature=0.0, target=None, draft=None,
        k=3, knobs=None, server=SERVER, stop=None, rounds=0):
    mod = modalities.get(modality)
    picks = list(methods or mod.display.methods)
    picks += [(OFF, AUTO)] * (3 - len(picks))
    inputs = Inputs(mod.default_prompt if prompt is None else prompt, target or mod.default_target,
                    draft or mod.default_draft, picks, k=k, init=init or mod.display.init, temperature=temperature,
                    top_k=0, top_p=1.0, seed=0, max_new=max_new, knobs=knobs or {}, rounds=rounds)
    return list(run_tab(server, modality, inputs, stop=stop))


def columns(out):
    return [(out[HEAD + 3 * c], out[OUT + 3 * c], out[STATS + 3 * c]) for c in range(views.COLUMNS)]


def check_final(outs, n_methods):
    """Streaming happened, the last tuple has a Done status, one table row per column, a plot, stats."""
    assert len(outs) > 2, "the run streams several updates"
    final = outs[-1]
    assert final[0].startswith("Done"), final[0]
    table, plot = final[1], final[2]
    assert len(table) == 1 + n_methods and table[0][0] == "autoregressive"
    assert all(row[2] > 0 and row[3] > 0 for row in table)  # wall s, frames/s
    assert plot is not None
    cols = columns(final)
    for row, (head, view, stats) in zip(table, cols[: 1 + n_methods]):
        assert head.startswith("### ") and "wall" in stats and "speedup" in stats and "running" not in stats
        assert row[6] in stats  # the table's speedup is the one the column shows
    for head, view, stats in cols[1 + n_methods:]:
        assert head == "" and view is None and stats == ""
    return cols


def pre_text(value: str) -> str:
    """The text a ``<pre>`` code block shows (tags dropped, entities decoded)."""
    assert value.startswith('<pre class="mm-code"><code>') and value.endswith("</code></pre>")
    return html.unescape(re.sub(r"<[^>]+>", "", value))


def test_builds_one_tab_per_registered_modality_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Gradio's argument-count warnings and the like fail the test
        demo = app.build_app(Server())
    assert isinstance(demo, gr.Blocks)
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert {modalities.get(n).title for n in modalities.names()} <= labels
    assert demo._queue.max_size == Server().queue_size  # the queue is bounded


def test_text_tab_streams_highlighted_code_and_identical_greedy_outputs():
    outs = run("text", max_new=8)
    cols = check_final(outs, 3)
    base_text = pre_text(cols[0][1])
    assert base_text.strip()
    for head, view, _ in cols[1:]:
        assert "lossless" in head and "identical to baseline" in head
        assert pre_text(view) == base_text  # greedy exact methods: the same text
    # the zoo heads (third slot) accept some drafts on the zoo target, and say so in the highlighting
    assert [m for m, _ in modalities.get("text").display.methods][2] == "heads"
    assert '<mark class="mm-draft">' in cols[3][1]


def test_code_block_keeps_indentation_blank_lines_and_identifiers():
    from mmspec.text.display import code_block

    code = "def f(x):\n\n    return x  # <ok> & done\n"
    assert pre_text(code_block(code)) == code
    value = code_block("", [("def fib", False), ("onacci(n):\n\n    ", True), ("return n", False)])
    assert pre_text(value) == "def fibonacci(n):\n\n    return n"
    assert 'fib<mark class="mm-draft">onacci' in value  # no space or padding element between the runs
    assert "padding: 0" in app.CSS.split("mark.mm-draft")[1].split("}")[0]
    assert "white-space: pre" in app.CSS


def test_models_are_cached_in_the_servers_lru_and_unserved_ones_refused():
    server = Server()
    mod = modalities.get("text")
    assert server.load(mod, mod.default_target, {}) is server.load(mod, mod.default_target, {})
    assert len(server.models) == 1 and server.models.max_models >= 2
    with pytest.raises(ValueError, match="does not serve"):
        server.check_model(mod, "/etc")


def test_model_flag_adds_served_models_and_allow_any_opens_them():
    args = app.parser().parse_args(["--model", "text=/tmp/my-model", "--model", "image=zoo:other"])
    server = Server.from_args(args)
    assert server.check_model(modalities.get("text"), "/tmp/my-model") == "/tmp/my-model"
    with pytest.raises(ValueError, match="does not serve"):
        server.check_model(modalities.get("speech"), "/tmp/my-model")  # served for text only
    assert not server.allow_any
    assert Server.from_args(app.parser().parse_args(["--allow-any-model"])).check_model(
        modalities.get("text"), "anything/at-all") == "anything/at-all"
    with pytest.raises(ValueError, match="MODALITY=NAME_OR_PATH"):
        Server.from_args(argparse.Namespace(model=["nosuch=/x"]))


def test_image_tab_returns_images():
    outs = run("image", methods=[("jacobi", "auto"), ("model", "auto")], max_new=64, k=4)
    cols = check_final(outs, 2)
    for _, view, _ in cols[:3]:
        assert view is not None and view.size[0] == view.size[1] > 0  # a PIL image
    assert "identical to baseline" in cols[1][0]
    assert any(columns(o)[0][1] is not None for o in outs[1:-1])  # the partial grid streams


def test_image_defaults_come_from_the_loaded_target():
    mod = modalities.get("image")
    choices, limit, value = app._defaults(SERVER, mod)
    assert mod.default_prompt in choices and len(choices) > 1
    assert limit == value == 64  # the zoo's 8 x 8 grid: the whole image, not the modality's 1024 limit


def test_speech_tab_returns_audio():
    outs = run("speech", methods=[("jacobi", "auto")], max_new=12, k=3)
    cols = check_final(outs, 1)
    rate, wav = cols[0][1]
    assert rate > 0 and wav.dtype.name == "int16" and wav.ndim == 1 and len(wav) > 0
    rate1, wav1 = cols[1][1]
    assert rate1 == rate and (wav1 == wav).all()  # greedy exact: the same audio


def test_speech_player_takes_audio_and_tensor_with_sample_rate():
    from mmspec.speech.display import player

    class Tagged(torch.Tensor):
        sample_rate = 8000

    wav = torch.linspace(-1, 1, 80)
    with_rate = wav.as_subclass(Tagged)
    audio = argparse.Namespace(waveform=wav, sample_rate=8000)  # the Audio shape: waveform + sample_rate
    for out in (with_rate, audio):
        rate, samples = player(out)
        assert rate == 8000 and samples.dtype.name == "int16" and samples.shape == (80,)
        assert samples[0] == -32767 and samples[-1] == 32767


def test_sampling_with_reproducible_rule_matches_baseline():
    outs = run("text", methods=[("prompt-lookup", "reproducible"), ("model", "speculative")], max_new=6,
               temperature=0.8)
    cols = check_final(outs, 2)
    assert "autoregressive" in cols[0][0]
    assert "identical to baseline ✓" in cols[1][0]  # reproducible: same keyed noise -> same tokens
    assert "lossless" in cols[2][0]


def test_lossy_rule_says_so_with_its_bound():
    outs = run("image", methods=[("jacobi", "lantern")], max_new=8, temperature=1.0)
    head = columns(outs[-1])[1][0]
    bound = modalities.get("image").rules["lantern"].bound
    assert "LOSSY" in head and bound in head


@pytest.mark.parametrize("modality,kwargs,needle", [
    ("text", {"prompt": "   "}, "prompt is empty"),
    ("text", {"prompt": "x" * (SERVER.max_prompt_chars + 1)}, f"this server allows {SERVER.max_prompt_chars}"),
    ("text", {"max_new": 513}, "between 1 and 512"),
    ("text", {"max_new": 0}, "between 1 and 512"),
    ("text", {"temperature": 0.5, "methods": [("jacobi", "greedy")]}, "temperature 0"),
    ("text", {"target": "/nonexistent/model/folder"}, "does not serve"),
    ("text", {"target": "gpt2"}, "does not serve"),
    ("text", {"draft": "/tmp", "methods": [("model", "auto")]}, "does not serve"),
    ("text", {"init": "sideways"}, "unknown init"),
    ("image", {"prompt": "purple elephant"}, "unknown class"),
    ("speech", {"prompt": ""}, "prompt is empty"),
])
def test_bad_input_is_refused_with_a_readable_error(modality, kwargs, needle):
    outs = run(modality, **kwargs)
    status = outs[-1][0]
    assert status.startswith("**Error:**") and needle in status, status
    assert "Traceback" not in status
    assert len(outs) <= 2 and outs[-1][1] == []  # refused: nothing ran


def test_run_after_error_still_works():
    run("text", prompt="")
    check_final(run("text", methods=[("prompt-lookup", "auto")], max_new=4), 1)


def test_stop_clears_the_running_labels():
    class StopAfter:  # a stop flag that is set once the second step arrived
        def __init__(self):
            self.calls = 0

        def is_set(self):
            self.calls += 1
            return self.calls > 2

    outs = run("text", methods=[("model", "auto")], max_new=40, stop=StopAfter())
    final = outs[-1]
    assert final[0] == views.STOPPED
    stats = [s for _, _, s in columns(final)[:2]]
    assert "stopped" in stats[0] and all("running" not in s for s in stats)
    assert stats[1] == "_not run_"


def test_speedup_bars_are_neutral_at_one_and_legend_leaves_the_lines():
    rows = [{"speedup": s, "noise": noise} for s, noise in
            [(None, False), (1.0, False), (1.004, False), (0.996, False), (1.3, False), (0.7, False), (1.3, True)]]
    assert views.bar_colors(rows) == [views.NEUTRAL, views.NEUTRAL, views.NEUTRAL, views.NEUTRAL, views.FASTER,
                                      views.SLOWER, views.NEUTRAL]  # within noise: neutral, not green
    rows = [{"method": m, "speedup": s, "low": None, "high": None, "noise": False, "per_step": [1, 3, 4, 4, 4, 4, 4, 4]}
            for m, s in [("a", 1.0), ("b", 2.0)]]
    fig = views.make_plot(rows)
    fig.canvas.draw()
    ax = fig.axes[1]
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())  # below the axes, not over the lines


def toy_modality() -> Modality:
    """A fourth modality from nothing but ToyTarget: prompts are frames tensors, outputs are lists of ids."""
    targets = {"toy:target": ToyTarget(vocab_size=8, seed=0, max_frames=40)}
    targets["toy:draft"] = targets["toy:target"].perturbed(0.3)

    def prompts(prompt, batch):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be ids such as '1 2 3'")
        return torch.tensor([[int(t)] for t in prompt.split()]).repeat(batch, 1, 1)  # frames [B, T, 1]

    display = Display(component="Textbox", value=lambda frames: " ".join(str(f[0]) for f in frames),
                      methods=(("jacobi", AUTO), ("model", AUTO)), helps={"jacobi": "toy"},
                      examples=(("3 1 4", "model", "a toy example"),))
    return Modality(name="toy", title="Toy", unit="ids", default_target="toy:target", default_draft="toy:draft",
                    examples=("1 2 3",), load=lambda name, **_: targets[name], prompts=prompts, max_new_tokens=8,
                    max_new_limit=30, display=display)


def test_a_registered_fourth_modality_gets_a_tab_and_runs():
    modalities.register(toy_modality())
    try:
        demo = app.build_app(Server())
        assert "Toy" in {getattr(b, "label", None) for b in demo.blocks.values()}
        assert any(getattr(b, "elem_id", None) == "run-toy" for b in demo.blocks.values())
        cols = check_final(run("toy", max_new=8, k=3, server=Server()), 2)
        assert all(re.fullmatch(r"\d( \d)*", view) for _, view, _ in cols[:3])
        assert "identical to baseline" in cols[1][0] and "identical to baseline" in cols[2][0]
        assert "does not serve" in run("toy", target="toy:other", server=Server())[-1][0]
    finally:
        modalities.unregister("toy")


def test_tree_slots_and_timed_rounds():
    """A method slot's tree budget reaches a drafter that branches; the speedup comes from interleaved rounds
    (mmspec.timing), shown as a median with its min-max or as "within noise"."""
    outs = run("text", methods=[("prompt-lookup", "auto", 6), ("jacobi", "auto", 6)], max_new=8, rounds=2)
    status, table = outs[-1][0], outs[-1][1]
    assert "median of 2 interleaved rounds" in status
    heads = [h for h, _, _ in columns(outs[-1])]
    assert "prompt-lookup / greedy tree=6" in heads[1] and "identical to baseline ✓" in heads[1]
    assert "tree=" not in heads[2]  # jacobi cannot branch: it runs as a chain
    assert all("[" in row[-1] or "within noise" in row[-1] for row in table[1:])
    bad = run("text", methods=[("prompt-lookup", "auto", -1)], max_new=4)
    assert bad[-1][0].startswith("**Error:**") and "tree nodes" in bad[-1][0]
