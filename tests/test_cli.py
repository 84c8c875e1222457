"""The CLI contract: JSON fields, exit code 2 with one line on stderr for user mistakes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmspec.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_contract(capsys, tiny_models):
    code, out, _ = run(capsys, "generate", "--modality", "text", "--target", tiny_models["llama"], "--draft",
                       tiny_models["llama-draft"], "--prompt", "def add(a, b):", "--drafter", "model", "--k", "3",
                       "--max-new-tokens", "8", "--batch", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"outputs", "token_ids", "stats", "files", "method", "lossless", "bound", "sampling"}
    assert result["method"] == "model / greedy" and result["lossless"] is True and result["files"] == []
    assert result["sampling"]["temperature"] == 0.0
    assert len(result["outputs"]) == 2 and all(isinstance(o, str) for o in result["outputs"])
    assert result["token_ids"][0] == result["token_ids"][1]  # greedy: both rows alike
    assert set(result["stats"]) >= {"wall_s", "new_tokens", "tokens_per_s", "steps",
                                    "mean_accepted", "acceptance_rate"}


def test_drafter_none_equals_every_drafter_but_heads_under_greedy(capsys, tiny_models):
    """Every core drafter the CLI names (heads need heads trained for this target: tests/test_heads*.py)."""
    from mmspec.methods import DRAFTERS

    ids = {}
    for drafter in [d for d in DRAFTERS if d != "heads"]:
        code, out, _ = run(capsys, "generate", "--target", tiny_models["gpt2"], "--draft", tiny_models["gpt2-draft"],
                           "--prompt", "for i in range(10):", "--drafter", drafter, "--max-new-tokens", "12", "--json")
        assert code == 0
        ids[drafter] = json.loads(out)["token_ids"]
    assert "model" in ids and all(v == ids["none"] for v in ids.values())


def test_compare_json(capsys, tiny_models):
    code, out, _ = run(capsys, "compare", "--target", tiny_models["llama"], "--draft", tiny_models["llama-draft"],
                       "--prompt", "class Stack:", "--methods", "prompt-lookup,model", "--max-new-tokens", "8", "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [r["method"] for r in rows] == ["autoregressive", "prompt-lookup / greedy", "model / greedy"]
    assert all(r["identical_to_baseline"] and r["lossless"] for r in rows)
    for r in rows:  # the median speedup inside its own min-max, over the default 5 interleaved rounds
        assert r["repeats"] == 5 and r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
        assert r["tokens_per_s_min"] <= r["tokens_per_s"] <= r["tokens_per_s_max"]
        assert r["tokens_per_forward"] == r["mean_accepted"] >= 1.0
    assert rows[0]["speedup"] == rows[0]["speedup_min"] == rows[0]["speedup_max"] == 1.0  # the same run, per round


def test_compare_text_report_gives_context_and_flags(capsys, tiny_models):
    code, out, err = run(capsys, "compare", "--target", tiny_models["llama"], "--prompt", "class Stack:",
                         "--methods", "jacobi", "--max-new-tokens", "4", "--repeats", "2")
    assert code == 0
    assert "prompt: 'class Stack:'" in out and "torch threads" in out and "baseline output:" in out
    assert "median [min-max]" in out and "tok/fwd" in out
    assert "runs shorter than" in out  # 4 tokens of a tiny model: flagged as too short to time


def test_timing_interleaves_and_flags():
    from mmspec import timing

    calls = []
    out = timing.interleave({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"] and out == {"a": [1, 1], "b": [2, 2]}  # warm-up, then A B A B
    s = timing.ratio_spread([1.0, 1.0, 1.0], [0.5, 1.25, 2.0])
    assert (s.median, s.low, s.high) == (0.8, 0.5, 2.0) and s.straddles(1.0)  # baseline time / method time
    env = {"device": "cpu", "threads": 2, "cpu_count": 2, "load_1min": 5.0}
    flags = timing.flags(s, [0.01, 1.0, 1.0], env)
    assert any("within noise" in f for f in flags) and any("too short" in f for f in flags)
    assert any("shared CPU" in f for f in flags)
    solid = timing.flags(timing.Spread.of([1.9, 2.0, 2.1]), [1.0, 1.0, 1.0], {**env, "load_1min": 1.0})
    assert solid == []
    with pytest.raises(ValueError, match="repeats"):
        timing.interleave({}, repeats=0)


@pytest.mark.parametrize("args, word", [
    (["--prompt", ""], "prompt"),
    (["--k", "0"], "k"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-k", "0"], "top_k"),
    (["--batch", "0"], "batch"),
    (["--drafter", "magic"], "drafter"),
    (["--rule", "magic"], "rule"),
    (["--prompt", "x " * 300], "context"),
    (["--modality", "video"], "modality"),
])
def test_bad_input_exits_2_with_one_line(capsys, tiny_models, args, word):
    argv = ["generate", "--target", tiny_models["llama"], "--prompt", "def f():", "--max-new-tokens", "4", *args]
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("mmspec: error:") and word in lines[-1]
    assert "Traceback" not in err


def test_missing_model_path(capsys):
    code, _, err = run(capsys, "generate", "--target", "./missing/model", "--prompt", "x")
    assert code == 2 and "does not exist" in err


def test_console_script_exit_code():
    """The installed ``mmspec`` command (next to this Python) and ``python -m mmspec.cli`` exit 2 on bad input."""
    script = Path(sys.executable).with_name("mmspec")
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    for command in ([str(script)], [sys.executable, "-m", "mmspec.cli"]):
        proc = subprocess.run([*command, "generate", "--k", "0"], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("mmspec: error:"), command


def test_zoo_distill_of_image_is_a_clean_error(capsys):
    code, _, err = run(capsys, "zoo", "distill", "image")
    assert code == 2 and "invalid choice: 'distill'" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_zoo_help_is_the_recipes_own(capsys):
    code, out, _ = run(capsys, "zoo", "train", "image", "--help")
    assert code == 0 and "usage:" in out and "mmspec zoo" not in out  # the recipe's usage, not the parent's


def test_methods_lists_every_modalitys_drafters_and_rule_bounds(capsys):
    from mmspec import methods, modalities

    code, out, _ = run(capsys, "methods")
    assert code == 0
    sections = dict(zip(modalities.names(), ("\n" + out).split("\n[")[1:]))
    assert set(sections) == set(modalities.names())
    for name, text in sections.items():
        mod = modalities.get(name)
        assert text.startswith(f"{name}]") and all(d in text.splitlines()[1] for d in methods.drafter_names(mod))
        for rule, spec in methods.rule_specs(mod).items():  # lossless, or LOSSY with the bound the rule states
            assert f"rule {rule:13} {'lossless' if spec.lossless else 'LOSSY: ' + spec.bound}" in text, (name, rule)
    assert "codec-lookup" in sections["speech"] and "LOSSY: total variation" in sections["speech"]


def test_help_shows_the_modalitys_own_drafters_options_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--modality", "speech", "--help"])
    out = re.sub(r"-\n\s+", "-", capsys.readouterr().out)  # argparse wraps long lines at hyphens
    assert "codec-lookup" in out and "--voice" in out and "--beta" in out  # the modality's drafter and options
    assert "zoo:speech" in out and "(default: 153)" in out and "new frames per row" in out


@pytest.mark.parametrize("name", ["zoo:../../etc", "zoo:a/b", "zoo:", "zoo:.hidden"])
def test_zoo_names_cannot_leave_the_zoo(capsys, name):
    code, _, err = run(capsys, "generate", "--target", name)
    assert code == 2 and "zoo names are plain folder names" in err


def test_tree_flags_and_the_mixed_drafter(capsys, tiny_models):
    base = ["--target", tiny_models["llama"], "--draft", tiny_models["llama-draft"], "--prompt", "class Stack:",
            "--max-new-tokens", "10"]
    code, out, _ = run(capsys, "generate", *base, "--drafter", "prompt-lookup+model", "--tree", "8", "--json")
    assert code == 0 and json.loads(out)["stats"]["nodes_per_forward"] > 1
    code, out, _ = run(capsys, "compare", *base, "--methods", "jacobi,model,prompt-lookup+model", "--tree", "6",
                       "--tree-width", "3", "--dynamic-tree", "--repeats", "1", "--json")
    rows = json.loads(out)["rows"]
    assert code == 0 and all(r["identical_to_baseline"] for r in rows)
    code, _, err = run(capsys, "generate", *base, "--drafter", "jacobi", "--tree", "8")
    assert code == 2 and "cannot draft a tree" in err
    code, _, err = run(capsys, "generate", *base, "--drafter", "model", "--tree", "-1")
    assert code == 2 and "--tree" in err


@pytest.mark.parametrize("modality, out, word", [
    ("text", "/proc/x.txt", "cannot write"), ("text", "/proc/nowhere/x.txt", "cannot create the folder"),
    ("text", "out.png", "must end in .txt"), ("image", "/proc/x.png", "cannot write"),
    ("image", "out.wav", "must end in .png"), ("image", "out", "must end in .png"),
    ("speech", "/proc/x.wav", "cannot write"), ("speech", "out.mp3", "must end in .wav"),
])
def test_out_is_checked_before_anything_loads(capsys, monkeypatch, modality, out, word):
    import mmspec.cli

    def never(*args, **kwargs):
        raise AssertionError("a model loaded before --out was checked")

    monkeypatch.setattr(mmspec.cli, "_load", never)
    code, _, err = run(capsys, "generate", "--modality", modality, "--out", out)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and word in err and "Traceback" not in err


def test_out_accepts_each_modalitys_own_suffixes(tmp_path):
    from mmspec import modalities
    from mmspec.files import writable

    for name in modalities.names():
        mod = modalities.get(name)
        for suffix in mod.suffixes or (mod.extension,):
            assert writable(tmp_path / name / f"out{suffix.upper()}", mod.suffixes) == str(tmp_path / name / f"out{suffix.upper()}")
    assert not list((tmp_path / "text").iterdir())  # the check leaves nothing behind


@pytest.mark.parametrize("name, fastest", [("text", {"heads", "prompt-lookup|heads"}), ("image", {"heads"}),
                                           ("speech", {"heads"})])
def test_compare_defaults_show_the_fastest_lossless_methods_next_to_the_classic_ones(name, fastest):
    from mmspec import modalities
    from mmspec.cli import _methods, build_parser

    mod = modalities.get(name)

    def drafters(*extra):
        return {d for d, _ in _methods(build_parser(name).parse_args(["compare", "--modality", name, *extra]), mod)}

    assert drafters() == {"prompt-lookup", "jacobi", "lookahead", "model"} | fastest
    assert drafters("--target", "some/model") == {"prompt-lookup", "jacobi", "lookahead", "model"}  # no heads for it
    assert drafters("--target", "some/model", "--heads", "my-heads") == drafters()
    assert drafters("--methods", "jacobi") == {"jacobi"}
