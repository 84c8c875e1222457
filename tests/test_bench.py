"""``mmspec bench`` on tiny random models: well-formed JSON/CSV, finite numbers, plots, exact methods exact."""
from __future__ import annotations

import csv
import json
import math

import pytest

from mmspec import bench, modalities
from mmspec.cli import main


@pytest.fixture(scope="module")
def bench_out(tiny_models, tmp_path_factory):
    from mmspec.heads import eagle_for, save_heads, target_info
    from mmspec.text import TextTarget

    out = tmp_path_factory.mktemp("bench")
    heads = save_heads(eagle_for(32, 32, 4, window=64), out / "heads",
                       target_info(TextTarget.from_pretrained(tiny_models["llama"], device="cpu")))
    code = main(["bench", "--suite", "text", "--quick", "--out", str(out), "--target", tiny_models["llama"],
                 "--heads", str(heads),
                 "--draft", tiny_models["llama-draft"], "--prompt", "def add(a, b):\n", "--prompt", "for i in range(",
                 "--max-new-tokens", "8", "--repeats", "1", "--device", "cpu"])
    assert code == 0
    return out


def test_json_is_well_formed(bench_out):
    report = json.loads((bench_out / "results.json").read_text())
    env = report["environment"]
    for key in ("processor", "cpu_count", "torch_threads", "python", "torch", "transformers", "mmspec"):
        assert env[key] is not None
    (suite,) = report["suites"]
    assert suite["suite"] == "text" and suite["config"]["n_prompts"] == 2 and suite["config"]["max_new"] == 8
    assert suite["config"]["threads"] >= 1 and suite["config"]["device"] == "cpu"
    labels = [m["method"] for m in suite["methods"]]
    quick = [m.label for m in modalities.get("text").suite.methods if m.quick]
    assert labels == ["autoregressive T=0", "autoregressive T=1", *quick]
    for m in suite["methods"]:
        for key in ("speedup", "mean_accepted", "acceptance_rate", "step_compression", "tokens_per_s", "wall_s"):
            assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] >= 0, (m["method"], key)
        assert len(m["per_prompt"]) == 2
        assert m["new_tokens"] == sum(r["new_tokens"] for r in m["per_prompt"]) <= 16
        assert m["mean_accepted"] >= 1.0 and 0 <= m["acceptance_rate"] <= 1
        assert sum(m["accepted_per_step_hist"].values()) == m["steps"]  # one step per target forward
        # the speedup is the matching baseline's wall time over this method's, both summed over the prompts
        base = next(b for b in suite["methods"] if b["drafter"] == "none" and b["temperature"] == m["temperature"])
        assert m["wall_s"] == pytest.approx(sum(r["wall_s"] for r in m["per_prompt"]))
        assert m["speedup"] == pytest.approx(base["wall_s"] / m["wall_s"])  # one round: the median is that ratio
        assert m["speedup_min"] <= m["speedup"] <= m["speedup_max"] and isinstance(m["flags"], list)
        if m["drafter"] == "none":  # plain decoding commits one frame per target forward
            assert m["mean_accepted"] == pytest.approx(1.0) and m["steps"] == m["new_tokens"]


def test_exact_methods_reproduce_the_baseline(bench_out):
    """Greedy and reproducible (keyed noise) methods must commit exactly the autoregressive tokens."""
    (suite,) = json.loads((bench_out / "results.json").read_text())["suites"]
    exact = [m for m in suite["methods"] if m["rule"] in ("greedy", "reproducible")]
    assert len(exact) >= 5
    assert all(m["identical_to_baseline"] is True for m in exact), [(m["method"], m["identical_to_baseline"]) for m in exact]
    assert all(m["identical_to_baseline"] is None for m in suite["methods"] if m["rule"] == "speculative")


def test_csv_has_prompt_and_aggregate_rows(bench_out):
    with open(bench_out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.CSV_COLUMNS
    methods = {r["method"] for r in rows}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        assert [r["row"] for r in mine] == ["prompt", "prompt", "all"]
        for r in mine:
            for key in ("speedup", "mean_accepted", "acceptance_rate", "tokens_per_s", "wall_s"):
                assert math.isfinite(float(r[key]))


def test_plots_are_png(bench_out):
    for name in ("speedup.png", "mean_accepted.png", "accepted_per_step.png"):
        data = (bench_out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_bad_suite_and_missing_model(tmp_path, capsys):
    assert main(["bench", "--suite", "video", "--out", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert main(["bench", "--suite", "all", "--target", "x", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--suite", "text", "--repeats", "0", "--out", str(tmp_path)]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    # A model that does not load skips its suite with a message; no suite ran -> exit 1, files still written.
    assert main(["bench", "--suite", "text", "--quick", "--target", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert "skipping suite 'text'" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["suites"][0]["skipped"]


def test_image_suite_on_the_zoo(tmp_path):
    """The image suite end to end on the zoo (a partial grid: 8 codes), with its class-accuracy proxy."""
    code = main(["bench", "--suite", "image", "--out", str(tmp_path), "--prompt", "red ring", "--max-new-tokens", "8",
                 "--repeats", "1", "--methods", "jacobi,lantern", "--device", "cpu"])
    assert code == 0
    (suite,) = json.loads((tmp_path / "results.json").read_text())["suites"]
    by_label = {m["method"]: m for m in suite["methods"]}
    assert {"autoregressive T=0", "autoregressive T=1", "jacobi", "lantern"} <= set(by_label)
    assert by_label["jacobi"]["identical_to_baseline"] is True
    assert by_label["lantern"]["lossless"] is False
    assert all(m["quality"] is not None and 0 <= m["quality"] <= 1 for m in suite["methods"])
    assert all(m["new_tokens"] == 8 for m in suite["methods"])


def test_speech_suite_reports_the_real_time_factor(tmp_path):
    """The speech suite on the zoo: seconds of audio per second of compute, from the decoded waveforms."""
    code = main(["bench", "--suite", "speech", "--out", str(tmp_path), "--prompt", "Hello world.", "--max-new-tokens", "20",
                 "--repeats", "1", "--methods", "model", "--device", "cpu"])
    assert code == 0
    (suite,) = json.loads((tmp_path / "results.json").read_text())["suites"]
    for m in suite["methods"]:
        # 20 delayed steps hold 20 - (K - 1) = 17 complete codec frames at 50 frames/s (unless speech ended first)
        assert 0 < m["output_seconds"] <= 17 / 50 + 1e-9
        assert m["real_time_factor"] == pytest.approx(m["output_seconds"] / m["wall_s"])
    greedy = [m for m in suite["methods"] if m["temperature"] == 0 and m["drafter"] != "none"]
    assert greedy and all(m["identical_to_baseline"] for m in greedy)
    with open(tmp_path / "results.csv") as f:
        assert "real_time_factor" in next(csv.reader(f))


def test_tree_flag_gives_branching_methods_a_node_budget(tmp_path, tiny_models):
    code = main(["bench", "--suite", "text", "--quick", "--out", str(tmp_path), "--target", tiny_models["llama"],
                 "--draft", tiny_models["llama-draft"], "--prompt", "def add(a, b):\n", "--max-new-tokens", "8",
                 "--repeats", "1", "--methods", "prompt-lookup,jacobi,model", "--tree", "6", "--device", "cpu"])
    assert code == 0
    (suite,) = json.loads((tmp_path / "results.json").read_text())["suites"]
    by_drafter = {m["drafter"]: m for m in suite["methods"] if m["temperature"] == 0}
    assert by_drafter["prompt-lookup"]["tree"] == 6 and by_drafter["model"]["tree"] == 6
    assert by_drafter["jacobi"]["tree"] is None  # jacobi cannot branch: it stays a chain
    assert all(m["identical_to_baseline"] for m in by_drafter.values())
    assert by_drafter["model"]["nodes_per_forward"] > 1


def test_a_batched_bench_runs_with_and_without_compaction_to_the_same_outputs(tmp_path, tiny_models):
    prompts = ["--prompt", "def add(a, b):\n", "--prompt", "for i in range(", "--prompt", "x = [", "--prompt", "import"]
    out = {}
    for flag in ("--compact", "--no-compact"):
        code = main(["bench", "--suite", "text", "--quick", "--out", str(tmp_path / flag), "--target", tiny_models["llama"],
                     *prompts, "--max-new-tokens", "8", "--repeats", "1", "--methods", "prompt-lookup", "--batch", "4",
                     flag, "--device", "cpu"])
        assert code == 0
        (suite,) = json.loads((tmp_path / flag / "results.json").read_text())["suites"]
        assert suite["config"]["compact"] is (flag == "--compact") and suite["config"]["batch"] == 4
        assert all(m["identical_to_baseline"] for m in suite["methods"])
        out[flag] = {m["method"]: (m["new_tokens"], m["steps"]) for m in suite["methods"]}
    assert out["--compact"] == out["--no-compact"]  # the same tokens in the same forwards: only the rows differ
