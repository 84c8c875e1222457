"""What the web app shows of a Run: per column a header (lossless or lossy, same as the baseline or not),
the output as the modality's ``Display`` renders it, and stats; then a table and a plot. Stats come from
``stats_of`` on each column's real ``Generation``; rules' lossless flag and bound from ``rule_specs``.
"""
from __future__ import annotations

import torch

from mmspec import methods
from mmspec.modalities import Modality
from mmspec.types import stats_of

from .serving import Column

COLUMNS = 4  # the baseline + three methods
NEUTRAL, FASTER, SLOWER = "#9ca3af", "#16a34a", "#dc2626"
STOPPED = "**Stopped.** Press Run to start again."


def table_headers(unit: str) -> list[str]:
    return ["method", unit, "wall s", f"{unit}/s", "mean accepted", "acceptance", "speedup"]


def stats_row(col: Column, base: Column | None) -> dict:
    s = stats_of(col.generation())
    speedup = None  # throughput ratio: the wall-time ratio when both made the same number of frames
    if base is not None and base.done and s["tokens_per_s"] > 0:
        speedup = s["tokens_per_s"] / stats_of(base.generation())["tokens_per_s"]
    return {"method": col.label, "new": s["new_tokens"], "wall_s": s["wall_s"], "per_s": s["tokens_per_s"],
            "mean_accepted": s["mean_accepted"], "acceptance_rate": s["acceptance_rate"], "speedup": speedup,
            "per_step": s["accepted_per_step"]}


def stats_markdown(row: dict, unit: str, state: str) -> str:
    """``state``: "running", "stopped" or "done" (only a running column says so)."""
    speed = "—" if row["speedup"] is None else f"**{row['speedup']:.2f}x**"
    head = {"running": "_running…_  \n", "stopped": "_stopped_  \n"}.get(state, "")
    return (f"{head}wall **{row['wall_s']:.2f} s** · {row['new']} {unit} · **{row['per_s']:.1f}** {unit}/s  \n"
            f"mean accepted **{row['mean_accepted']:.2f}** · acceptance **{row['acceptance_rate']:.0%}** · "
            f"speedup {speed}")


def banner(mod: Modality, col: Column, base: Column | None, greedy: bool) -> str:
    """Lossless or LOSSY (with the rule's bound), and whether the tokens equal the baseline's."""
    if base is None or col is base:
        return f"### {col.label}\nbaseline · one target forward per frame"
    spec = methods.rule_specs(mod)[col.rule]
    kind = "lossless" if spec.lossless else "LOSSY"
    bound = "" if spec.lossless or not spec.bound else f"  \n_bound: {spec.bound}_"
    if not col.done or not base.done:
        return f"### {col.label}\n{kind}{bound}"
    same = col.generation().token_ids() == base.generation().token_ids()
    if greedy or (col.rule == "reproducible" and base.rule == "reproducible"):
        verdict = "identical to baseline ✓" if same else ("differs from baseline ✗" if spec.lossless
                                                          else "differs from baseline (expected: lossy)")
    else:
        verdict = "same tokens as baseline" if same else "sampled: same distribution, different draw"
    return f"### {col.label}\n**{kind}** · {verdict}{bound}"


def output_value(mod: Modality, target, col: Column):
    """The column's output component value, as the modality's ``Display`` renders it."""
    display = mod.display
    if display.live is not None and col.steps and (display.live_final or not col.done):
        return display.live(target, col.generation().tokens[0], _drafted(col))
    if col.done and col.outputs:
        return display.value(col.outputs[0])
    return None


def _drafted(col: Column):
    """Row 0's accepted-draft flags per committed frame ``[T]``."""
    return torch.cat([s.from_draft for s in col.steps], dim=1)[0]


def bar_colors(speedups: list[float | None]) -> list[str]:
    """Grey for the baseline and anything that shows as 1.00x; green faster, red slower."""
    colors = [NEUTRAL]
    for s in speedups[1:]:
        shown = round(s or 0.0, 2)
        colors.append(NEUTRAL if shown == 1.0 or s is None else FASTER if shown > 1.0 else SLOWER)
    return colors


def make_plot(rows: list[dict]):
    """Speedup bars and frames committed per step, one line per method; the legend sits below the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    names = [r["method"] for r in rows]
    speed = [r["speedup"] for r in rows]
    ax1.barh(names[::-1], [s or 0.0 for s in speed][::-1], color=bar_colors(speed)[::-1])
    ax1.axvline(1.0, color="#374151", lw=0.8, ls="--")
    ax1.set_xlabel("speedup over baseline")
    for r in rows:
        ax2.plot(range(1, len(r["per_step"]) + 1), r["per_step"], marker=".", lw=1, label=r["method"])
    ax2.set_xlabel("step")
    ax2.set_ylabel("frames committed")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(4, len(rows)), frameon=False)
    fig.tight_layout()
    plt.close(fig)
    return fig


def table(rows: list[dict]) -> list[list]:
    return [[r["method"], r["new"], round(r["wall_s"], 3), round(r["per_s"], 1), round(r["mean_accepted"], 2),
             round(r["acceptance_rate"], 2), "—" if r["speedup"] is None else round(r["speedup"], 2)] for r in rows]


def outputs(mod: Modality, target, status: str, cols: list[Column], greedy: bool, final: bool = False) -> tuple:
    """The tuple the tab's outputs expect: status, table, plot, then (header, output, stats) per column."""
    base = cols[0] if cols else None
    rows = [stats_row(c, base) for c in cols if c.steps]
    out = [status, table(rows), make_plot(rows) if final and rows else None]
    for i in range(COLUMNS):
        if i >= len(cols):
            out += ["", None, ""]
            continue
        c = cols[i]
        state = "done" if c.done else "stopped" if c.stopped else "running"
        stats = stats_markdown(stats_row(c, base), mod.unit, state) if c.steps else "_not run_" if c.stopped \
            else "_waiting…_"
        out += [banner(mod, c, base, greedy), output_value(mod, target, c), stats]
    return tuple(out)
