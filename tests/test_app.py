"""The Gradio app: builds without launching; each tab's run function streams outputs and stats for the
zoo models; bad input yields a readable error line instead of raising."""
from __future__ import annotations

import pytest

gr = pytest.importorskip("gradio")

from mmspec.demos import app  # noqa: E402

# run_tab(modality, prompt, target, draft, d1, r1, d2, r2, d3, r3, k, init, temperature, top_k, top_p,
#         guidance, seed, max_new)
HEAD, OUT, STATS = 3, 4, 5  # per column c: index + 3 * c in the yielded tuple


def run(modality, prompt=None, *, methods=None, max_new=6, init=None, temperature=0.0, target=None, draft=None,
        k=3, guidance=None):
    api = app.modality_api(modality)
    spec = app.TABS[modality]
    picks = methods or spec.methods
    flat = [x for pair in picks for x in pair] + [app.OFF, app.AUTO] * (3 - len(picks))
    return list(app.run_tab(modality, api.DEFAULT_PROMPT if prompt is None else prompt, target or api.DEFAULT_TARGET,
                            draft or api.DEFAULT_DRAFT, *flat, k, init or spec.init, temperature, 0, 1.0,
                            guidance if guidance is not None else (spec.guidance or 1.0), 0, max_new))


def columns(out):
    return [(out[HEAD + 3 * c], out[OUT + 3 * c], out[STATS + 3 * c]) for c in range(app.COLUMNS)]


def check_final(outs, n_methods):
    """Streaming happened, the last tuple has a Done status, one table row per column, a plot, stats."""
    assert len(outs) > 2, "the run streams several updates"
    final = outs[-1]
    assert final[0].startswith("Done"), final[0]
    table, plot = final[1], final[2]
    assert len(table) == 1 + n_methods and table[0][0] == "autoregressive"
    assert all(row[2] > 0 and row[3] > 0 for row in table)  # wall s, tokens/s
    assert table[0][6] == 1.0  # the baseline's own speedup
    assert plot is not None
    cols = columns(final)
    for head, view, stats in cols[: 1 + n_methods]:
        assert head.startswith("### ") and "wall" in stats and "speedup" in stats and "running" not in stats
    return cols


def test_builds_without_launching():
    demo = app.build_app()
    assert isinstance(demo, gr.Blocks)
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert {"Text", "Image", "Speech"} <= labels


def test_text_tab_streams_highlighted_text_and_identical_greedy_outputs():
    outs = run("text", max_new=8)
    cols = check_final(outs, 3)
    base_text = "".join(t for t, _ in cols[0][1])
    assert base_text.strip()
    for head, view, _ in cols[1:]:
        assert "lossless" in head and "identical to baseline" in head
        assert "".join(t for t, _ in view) == base_text  # greedy exact methods: the same text
    labels = {label for _, view, _ in cols[1:] for _, label in view}
    assert labels <= {None, "accepted draft"}
    # the model drafter accepts some drafts on the zoo pair, and says so in the highlighting
    assert any(label == "accepted draft" for _, label in cols[2][1])


def test_models_are_cached():
    api = app.modality_api("text")
    opts = app.modality_options(api)
    assert app.load_model("text", api.DEFAULT_TARGET, opts) is app.load_model("text", api.DEFAULT_TARGET, opts)


def test_image_tab_returns_images():
    pytest.importorskip("diffusers")
    outs = run("image", methods=[("jacobi", "auto"), ("model", "auto")], max_new=64, k=4)
    cols = check_final(outs, 2)
    for _, view, _ in cols[:3]:
        assert view is not None and view.size[0] == view.size[1] > 0  # a PIL image
    assert cols[3][1] is None  # the unused column stays empty
    assert "identical to baseline" in cols[1][0]


def test_image_class_dropdown_choices():
    pytest.importorskip("diffusers")
    choices = app.prompt_choices("image")
    assert app.modality_api("image").DEFAULT_PROMPT in choices and len(choices) > 1


def test_speech_tab_returns_audio():
    outs = run("speech", methods=[("jacobi", "auto")], max_new=12, k=3)
    cols = check_final(outs, 1)
    rate, wav = cols[0][1]
    assert rate > 0 and wav.dtype.name == "int16" and wav.ndim == 1
    assert cols[1][1][1].shape == wav.shape  # greedy exact: the same audio


def test_sampling_with_reproducible_rule_matches_baseline():
    outs = run("text", methods=[("prompt-lookup", "reproducible"), ("model", "speculative")], max_new=6,
               temperature=0.8)
    cols = check_final(outs, 2)
    assert "autoregressive" in cols[0][0]
    assert "identical to baseline ✓" in cols[1][0]  # reproducible: same keyed noise -> same tokens
    assert "lossless" in cols[2][0]


@pytest.mark.parametrize("modality,kwargs,needle", [
    ("text", {"prompt": "   "}, "prompt is empty"),
    ("text", {"prompt": "x" * (app.MAX_PROMPT_CHARS + 1)}, "characters"),
    ("text", {"max_new": app.MAX_NEW["text"] + 1}, "max new tokens"),
    ("text", {"temperature": 0.5, "methods": [("jacobi", "greedy")]}, "temperature 0"),
    ("text", {"target": "/nonexistent/model/folder"}, ""),
    ("text", {"init": "sideways"}, "unknown init"),
    ("image", {"prompt": "purple elephant"}, "unknown class"),
    ("speech", {"prompt": ""}, "prompt is empty"),
])
def test_bad_input_yields_readable_error(modality, kwargs, needle):
    if modality == "image":
        pytest.importorskip("diffusers")
    outs = run(modality, **kwargs)
    status = outs[-1][0]
    assert status.startswith("**Error:**") and needle in status
    assert "Traceback" not in status


def test_run_after_error_still_works():
    run("text", prompt="")
    check_final(run("text", methods=[("prompt-lookup", "auto")], max_new=4), 1)
