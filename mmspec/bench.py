"""``mmspec bench``: Spec-Bench-style suites over every registered modality.

A suite is data: a prompt set and a list of methods (drafter x accept rule x temperature), held by its
modality (``Modality.suite``). The harness drives a modality only through ``mmspec.modalities`` and the
core (``methods.run``, ``accept``), so it knows nothing about text, images or audio. Every method of a
suite runs on the same loaded target, device and seed; each (method, prompt) gets one warm-up run and
``--repeats`` timed runs (the median wall time counts). Speedup is measured against the same target's
autoregressive decoding at the same temperature.

Outputs in ``--out``: ``results.json`` (hardware, versions, every row), ``results.csv`` (per prompt and
per method rows), ``speedup.png``, ``mean_accepted.png``, ``accepted_per_step.png``; and a summary table
on stdout.
"""
from __future__ import annotations

import csv
import functools
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import methods as named
from . import modalities, timing
from .types import Sampling, count


# ------------------------------------------------------------------------------------------ suites
@dataclass(frozen=True)
class Method:
    """One benchmarked method: drafter and rule by the names ``mmspec.methods`` knows (the core's and the
    modality's), with ``options`` (pairs) for the rule, e.g. ``(("beta", 0.1),)``."""

    label: str
    drafter: str = "none"
    rule: str = "greedy"
    temperature: float = 0.0
    init: str = "random"
    k: int | None = None
    options: tuple = ()
    quick: bool = True  # part of --quick
    tree: int | None = None  # node budget of a token tree per step (None: a chain)
    width: int = 2  # children per expanded tree node
    dynamic: bool = False  # model drafter: EAGLE-2 expansion


@dataclass(frozen=True)
class Suite:
    """A modality's bench suite: ``prompts(n, target) -> list``, sizes as (full, quick) pairs, the methods,
    and an optional ``quality(target, prompts, outputs, baseline_outputs) -> float | None``."""

    prompts: Callable[[int, Any], list]
    n_prompts: tuple[int, int]
    max_new: tuple[int, int]
    k: int = 4
    methods: tuple[Method, ...] = ()
    quality: Callable[..., float | None] | None = None
    quality_name: str = ""


def suite_names() -> list[str]:
    """The registered modalities with a bench suite (and those that cannot load here: ``run_suite`` says why)."""
    return [n for n in modalities.names() if modalities.unavailable(n) or modalities.get(n).suite is not None]


# ------------------------------------------------------------------------------------------ running
def run_once(modality, method: Method, target, draft, prompt, max_new: int, k: int, seed: int, heads=None,
             cache: dict | None = None, compact: bool = True):
    """One timed generation (a fresh drafter each run: drafters keep state; loaded heads kept in ``cache``);
    ``compact``: rows that have ended leave a batch (``mmspec.compaction``)."""
    return named.run(modality, target, prompt, drafter=method.drafter, rule=method.rule, draft=draft,
                     k=method.k or k, init=method.init, max_new_tokens=max_new, seed=seed,
                     sampling=Sampling(temperature=method.temperature), options=dict(method.options),
                     tree=method.tree, width=method.width, dynamic=method.dynamic, heads=heads,
                     cache=cache, compact=compact)


def picked(method: Method, names: list[str] | None, suite: Suite) -> bool:
    """``--methods``: a name that is a method's label picks that method; any other name picks every method
    with that drafter (none given: all)."""
    if not names:
        return True
    labels = {m.label for m in suite.methods}
    return method.label in names or (method.drafter in names and method.drafter not in labels)


def uses_heads(method: Method) -> bool:
    return "heads" in named.parts_of(method.drafter)


def heads_for(modality, methods: list[Method], target_name, heads) -> tuple[list[Method], str | None]:
    """The methods that can run and the heads folder they read: ``heads`` when given, the modality's zoo heads
    on its default target; other targets without ``--heads`` drop the self-drafting methods (with a note)."""
    if not any(uses_heads(m) for m in methods):
        return methods, None
    if heads is None and target_name not in (None, modality.default_target):
        print(f"mmspec bench: no --heads for target {target_name!r}: skipping the self-drafting methods",
              file=sys.stderr)
        return [m for m in methods if not uses_heads(m)], None
    return methods, named.heads_folder(modality, heads)


def with_tree(methods: list[Method], modality, tree: int, width: int | None) -> list[Method]:
    """The chain methods whose drafter branches, given ``tree`` nodes (and ``width``); the others (and methods
    that name their own tree) unchanged."""
    out = []
    for m in methods:
        if not m.tree and named.budget_for(m.drafter, modality, tree):
            m = dataclasses.replace(m, tree=tree, width=width or m.width, label=f"{m.label} tree={tree}")
        out.append(m)
    return out


def baseline_for(temperature: float) -> Method:
    """Autoregressive decoding at a temperature; keyed noise at T > 0 so reproducible runs match it token for token."""
    rule = "greedy" if temperature == 0 else "reproducible"
    return Method(f"autoregressive T={temperature:g}", "none", rule, temperature)


def measure(modality, plan: list[Method], target, draft, prompts, max_new, k, seed, repeats, bar, heads=None,
            compact: bool = True) -> dict[str, list]:
    """Per prompt: every method warmed up once, then ``repeats`` interleaved rounds (``mmspec.timing``); a row
    per (method, prompt) with the median wall time and every round's time."""
    rows: dict[str, list] = {m.label: [] for m in plan}
    cache: dict = {}  # the heads are read once for all runs
    for i, prompt in enumerate(prompts):
        runs = {m.label: functools.partial(run_once, modality, m, target, draft, prompt, max_new, k, seed, heads, cache,
                                           compact)
                for m in plan}
        timed = timing.interleave(runs, repeats, progress=lambda name, r: bar.update())
        for label, gens in timed.items():
            s = gens[-1].stats
            wall = statistics.median(g.wall_s for g in gens)
            rows[label].append({
                "prompt_index": i, "wall_s": wall, "round_wall_s": [g.wall_s for g in gens], "new_tokens": s["new_tokens"],
                "steps": s["steps"], "tokens_per_s": s["new_tokens"] / wall if wall > 0 else 0.0,
                "mean_accepted": s["mean_accepted"], "acceptance_rate": s["acceptance_rate"],
                "nodes_per_forward": s["nodes_per_forward"], "step_compression": s["new_tokens"] / s["steps"] if s["steps"] else 0.0,
                "accepted_per_step": s["accepted_per_step"], "token_ids": gens[-1].token_ids(),
                "output": gens[-1].outputs[0], "outputs": gens[-1].outputs, "rows": len(gens[-1].outputs),
            })
    return rows


def run_suite(name: str, *, quick: bool, repeats: int, seed: int = 0, target_name=None, draft_name=None,
              n_prompts=None, max_new=None, k=None, methods=None, load_options=None, prompts=None,
              progress: bool = True, tree: int = 0, width: int | None = None, heads: str | None = None,
              batch: int = 1, compact: bool = True) -> dict:
    """Run one modality's suite; returns ``{"suite", "config", "methods": [...], "prompts": [...]}`` (or ``skipped``).
    ``batch`` B > 1: the prompts run B different ones at a time (``batches``), every method and its baseline alike;
    ``compact`` False keeps rows that have ended in the batch (to measure what compaction saves)."""
    from tqdm.auto import tqdm

    # 1. the modality and its target (skip the suite cleanly when a package is missing or a model does not load)
    try:
        modality = modalities.get(name)
        suite, opts = modality.suite, dict(load_options or {})
        target = modality.load(target_name or modality.default_target, **opts)
    except (ImportError, OSError, ValueError) as err:
        print(f"mmspec bench: skipping suite {name!r}: {type(err).__name__}: {err}", file=sys.stderr)
        return {"suite": name, "skipped": f"{type(err).__name__}: {err}", "methods": []}
    chosen = [m for m in suite.methods if (not quick or m.quick) and picked(m, methods, suite)]
    chosen = with_tree(chosen, modality, tree, width)
    chosen, heads = heads_for(modality, chosen, target_name, heads)
    needs_draft = any(named.needs_draft(m.drafter) for m in chosen)
    draft = modality.load(draft_name or modality.default_draft, **opts) if needs_draft else None
    # 2. prompts and sizes
    n = n_prompts or suite.n_prompts[1 if quick else 0]
    prompts = list(prompts)[:n_prompts] if prompts else suite.prompts(n, target)
    max_new = max_new or suite.max_new[1 if quick else 0]
    k = k or suite.k
    plan = [baseline_for(t) for t in sorted({m.temperature for m in chosen})] + chosen
    groups = batches(prompts, batch)
    bar = tqdm(total=len(plan) * len(groups) * (1 + repeats), desc=f"bench {name}", disable=not progress)
    # 3. baselines and every method on the same target, prompts (B at a time) and seed, in interleaved rounds
    rows = measure(modality, plan, target, draft, groups, max_new, k, seed, repeats, bar, heads, compact)
    bar.close()
    env = timing.machine(target.device)
    results = [summarise(modality, m, target, prompts, rows[m.label], rows[baseline_for(m.temperature).label], env)
               for m in plan]
    config = {"quick": quick, "repeats": repeats, "seed": seed, "k": k, "max_new": max_new, "n_prompts": len(prompts),
              "batch": batch, "compact": compact,
              "target": target_name or modality.default_target,
              "draft": (draft_name or modality.default_draft) if draft else None, "heads": heads,
              "device": str(target.device), "threads": env["threads"], "load_1min": env["load_1min"],
              "quality": suite.quality_name or None, "forward": getattr(target, "forward_path", "eager"),
              "setup_s": getattr(getattr(target, "fast", None), "setup_s", None)}
    return {"suite": name, "modality": name, "config": config, "prompts": [_short(p) for p in prompts],
            "methods": results}


def batches(prompts: list, batch: int) -> list:
    """The prompts ``B`` at a time, each group one generation with a row per prompt (B = 1: each prompt alone,
    as given); a last group may be smaller."""
    B = count(batch, "batch (--batch: prompts generated together)")
    if B == 1:
        return list(prompts)
    return [list(prompts[i: i + B]) for i in range(0, len(prompts), B)]


def summarise(modality, method: Method, target, prompts, rows, base_rows, env: dict) -> dict:
    """Per-prompt speedups and the aggregate row of one method. ``speedup`` is the median over rounds of the
    baseline's time over the method's (summed over prompts), with its min-max and trust flags. Outputs
    with a ``seconds`` length (audio) add the real-time factor: seconds of output per second of compute."""
    spec = named.make_rule(method.rule, modality, target, dict(method.options)).spec
    exact = method.drafter == "none" or (spec.lossless and (method.temperature == 0 or spec.keyed_noise))
    for row, b in zip(rows, base_rows):
        row["speedup"] = b["wall_s"] / row["wall_s"] if row["wall_s"] > 0 else 0.0
        row["throughput_speedup"] = row["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] > 0 else 0.0
        row["identical_to_baseline"] = row["token_ids"] == b["token_ids"] if exact else None
    quality = None
    if modality.suite.quality:
        quality = modality.suite.quality(target, prompts, [o for r in rows for o in r["outputs"]],
                                         [o for b in base_rows for o in b["outputs"]])
    wall, base_wall = sum(r["wall_s"] for r in rows), sum(b["wall_s"] for b in base_rows)
    tokens, forwards = sum(r["new_tokens"] for r in rows), sum(r["steps"] for r in rows)
    base_tokens = sum(b["new_tokens"] for b in base_rows)
    per_step = [n for r in rows for n in r["accepted_per_step"]]
    timed = all(hasattr(o, "seconds") for r in rows for o in r["outputs"])
    seconds = sum(o.seconds for r in rows for o in r["outputs"]) if timed else None
    same = [r["identical_to_baseline"] for r in rows]
    per_round = timing.ratio_spread([sum(t) for t in zip(*(b["round_wall_s"] for b in base_rows))],
                                    [sum(t) for t in zip(*(r["round_wall_s"] for r in rows))])
    return {
        "method": method.label, "drafter": method.drafter, "rule": method.rule, "temperature": method.temperature,
        "init": method.init if method.drafter in named.TAKES_INIT else None, "lossless": spec.lossless,
        "bound": spec.bound, "speedup": per_round.median, "speedup_min": per_round.low,
        "speedup_max": per_round.high, "speedup_of_medians": base_wall / wall if wall > 0 else 0.0,
        "flags": [] if method.drafter == "none" else timing.flags(per_round, [r["wall_s"] for r in rows], env),
        "speedup_mean_per_prompt": statistics.fmean(r["speedup"] for r in rows),
        # tokens/s over the baseline's: differs from ``speedup`` when sampling changes the output length
        "throughput_speedup": (tokens / wall) / (base_tokens / base_wall) if wall > 0 and base_tokens else 0.0,
        # frames per target forward per row (each row over the steps it took part in), weighted by steps
        "mean_accepted": sum(r["mean_accepted"] * r["steps"] for r in rows) / forwards if forwards else 0.0,
        "acceptance_rate": statistics.fmean(r["acceptance_rate"] for r in rows),
        "step_compression": tokens / forwards if forwards else 0.0,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0, "wall_s": wall, "new_tokens": tokens,
        "output_seconds": seconds, "real_time_factor": seconds / wall if seconds is not None and wall > 0 else None,
        "nodes_per_forward": statistics.fmean(r["nodes_per_forward"] for r in rows),
        "tree": method.tree, "steps": forwards, "identical_to_baseline": None if same[0] is None else all(same),
        "quality": quality, "accepted_per_step_hist": _hist(per_step),
        "per_prompt": [{k: v for k, v in r.items() if k not in ("output", "outputs", "token_ids", "accepted_per_step")}
                       for r in rows],
    }


def _hist(values: list[int]) -> dict:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _short(prompt, n: int = 60) -> str:
    text = str(prompt).replace("\n", "\\n")
    return text if len(text) <= n else "..." + text[-n:]


# ---------------------------------------------------------------------------------- environment
def environment() -> dict:
    """Hardware and software the numbers were measured on."""
    import mmspec

    env = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "python": platform.python_version(), "torch": torch.__version__, "mmspec": mmspec.__version__,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from . import skinny
    from .fast import ATTEND_FRAMES, SKINNY_ROWS

    env["fast_products"] = (f"skinny kernel (up to {SKINNY_ROWS} rows; attention up to {ATTEND_FRAMES} frames), "
                            "oneDNN and torch's attention above") if skinny.library() is not None \
        else f"oneDNN prepacked, torch's attention ({skinny.reason()})"
    for pkg in ("transformers", "diffusers", "encodec"):
        try:
            env[pkg] = importlib.import_module(pkg).__version__
        except Exception:  # an optional package: record that it is missing
            env[pkg] = None
    return env


# ---------------------------------------------------------------------------------------- outputs
CSV_COLUMNS = ["suite", "method", "row", "prompt_index", "drafter", "rule", "temperature", "lossless", "speedup",
               "throughput_speedup",
               "mean_accepted", "acceptance_rate", "step_compression", "tokens_per_s", "wall_s", "new_tokens",
               "steps", "identical_to_baseline", "quality", "real_time_factor"]


def write_csv(results: list[dict], path: str) -> None:
    """One row per (suite, method, prompt) and one aggregate row (``row = "all"``) per method."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for suite in results:
            for m in suite["methods"]:
                common = {"suite": suite["suite"], "method": m["method"], "drafter": m["drafter"], "rule": m["rule"],
                          "temperature": m["temperature"], "lossless": m["lossless"]}
                for r in m["per_prompt"]:
                    w.writerow({**common, **r, "row": "prompt", "quality": ""})
                w.writerow({**common, **m, "row": "all", "prompt_index": ""})


def write_plots(results: list[dict], out: str) -> list[str]:
    """speedup.png, mean_accepted.png (bars per method, one panel per suite), accepted_per_step.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    suites = [s for s in results if s["methods"]]
    paths = []
    for key, title, fname in (("speedup", "speedup over autoregressive", "speedup.png"),
                              ("mean_accepted", "mean accepted frames per target forward", "mean_accepted.png")):
        fig, axes = plt.subplots(1, max(1, len(suites)), figsize=(6 * max(1, len(suites)), 4), squeeze=False)
        for ax, s in zip(axes[0], suites):
            labels = [m["method"] for m in s["methods"]]
            colors = ["tab:gray" if m["drafter"] == "none" else ("tab:blue" if m["lossless"] else "tab:orange")
                      for m in s["methods"]]
            ax.barh(labels, [m[key] for m in s["methods"]], color=colors)
            ax.axvline(1.0, color="k", lw=0.8, ls="--")
            ax.invert_yaxis()
            ax.set_title(f"{s['suite']}: {title}", fontsize=10)
        handles = [Patch(color=c, label=n) for c, n in (("tab:gray", "autoregressive"), ("tab:blue", "lossless"),
                                                       ("tab:orange", "lossy"))]
        axes[0][-1].legend(handles=handles, fontsize=7, loc="lower right")
        fig.tight_layout()
        paths.append(os.path.join(out, fname))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(1, max(1, len(suites)), figsize=(6 * max(1, len(suites)), 4), squeeze=False)
    for ax, s in zip(axes[0], suites):
        for m in s["methods"]:
            if m["drafter"] == "none":
                continue
            hist = m["accepted_per_step_hist"]
            total = sum(hist.values()) or 1
            ax.plot([int(x) for x in hist], [v / total for v in hist.values()], marker="o", label=m["method"])
        ax.set_xlabel("frames committed per step")
        ax.set_ylabel("fraction of steps")
        ax.set_title(f"{s['suite']}: accepted per step", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "accepted_per_step.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def table(results: list[dict], env: dict | None = None) -> str:
    """The summary table printed at the end (one block per suite), with the machine and any trust flags."""
    lines = []
    for s in results:
        if not s["methods"]:
            lines.append(f"[{s['suite']}] skipped: {s.get('skipped')}")
            continue
        c = s["config"]
        lines.append(f"[{s['suite']}] {c['n_prompts']} prompts x {c['max_new']} frames, k={c['k']}, "
                     f"batch={c.get('batch', 1)} (tok/fwd: every row; acc/row: per row), "
                     f"repeats={c['repeats']} (interleaved), device={c['device']}, threads={c.get('threads')}, "
                     f"forward={c.get('forward', 'eager')}" + (f" (set-up {c['setup_s']:.1f} s)" if c.get("setup_s") else ""))
        q = c.get("quality") or "quality"
        lines.append(f"{'method':34} {'speedup [min-max]':>18} {'tok/fwd':>7} {'acc/row':>7} {'acc.rate':>8} {'tok/s':>7} "
                     f"{'wall_s':>7} {'x_rt':>5} {'same':>5} {'lossless':>8} {q:>8}")
        for m in s["methods"]:
            same = "-" if m["identical_to_baseline"] is None else str(m["identical_to_baseline"])
            qv = "-" if m["quality"] is None else f"{m['quality']:.3f}"
            rt = "-" if m.get("real_time_factor") is None else f"{m['real_time_factor']:.2f}"
            spread = f"{m['speedup']:.2f} [{m['speedup_min']:.2f}-{m['speedup_max']:.2f}]"
            lines.append(f"{m['method'][:34]:34} {spread:>18} {m['step_compression']:7.2f} {m['mean_accepted']:7.2f} "
                         f"{m['acceptance_rate']:8.2f} "
                         f"{m['tokens_per_s']:7.1f} {m['wall_s']:7.2f} {rt:>5} {same:>5} {str(m['lossless']):>8} {qv:>8}")
        lines += [f"  note: {m['method']}: {flag}" for m in s["methods"] for flag in m.get("flags", [])]
    return "\n".join(lines)


def _finite(obj):
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------- command
def main(args, rest=None) -> int:
    """Entry point of ``mmspec bench`` (arguments from ``mmspec.cli.build_parser``)."""
    # 1. which suites, how big
    known = suite_names()
    names = known if args.suite == "all" else [args.suite]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown suite {name!r}; allowed: {', '.join(known)}, all")
    if len(names) > 1 and (args.target or args.draft):
        raise ValueError("--target/--draft name models of one modality: pick a --suite, not 'all'")
    repeats = getattr(args, "repeats", None)
    repeats = (1 if args.quick else 3) if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if getattr(args, "tree", 0) < 0:
        raise ValueError(f"--tree (node budget) must be 0 or >= 1, got {args.tree}")
    methods = [m.strip() for m in (getattr(args, "methods", None) or "").split(",") if m.strip()] or None
    opts = {key: val for key in ("device", "dtype", "fast") if (val := getattr(args, key, None)) is not None}
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    # 2. run every suite
    results = [run_suite(name, quick=args.quick, repeats=repeats, seed=getattr(args, "seed", 0),
                         target_name=args.target, draft_name=args.draft, n_prompts=getattr(args, "prompts", None),
                         max_new=getattr(args, "max_new_tokens", None), k=getattr(args, "k", None), methods=methods,
                         load_options=opts, prompts=getattr(args, "prompt", None), tree=getattr(args, "tree", 0),
                         width=getattr(args, "tree_width", None), heads=getattr(args, "heads", None),
                         batch=getattr(args, "batch", 1), compact=getattr(args, "compact", True))
               for name in names]
    # 3. write results.json, results.csv, plots; print the table
    os.makedirs(args.out, exist_ok=True)
    command = "mmspec bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    report = {"command": command, "environment": environment(), "suites": results}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(_finite(report), f, indent=1)
    write_csv(results, os.path.join(args.out, "results.csv"))
    plots = write_plots(results, args.out) if any(s["methods"] for s in results) else []
    print(table(results))
    print(f"\nwrote {args.out}/results.json, results.csv" + (f", {', '.join(os.path.basename(p) for p in plots)}" if plots else ""))
    return 0 if any(s["methods"] for s in results) else 1
