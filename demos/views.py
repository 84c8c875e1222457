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
    """One column's numbers. The speedup is the median over the timed rounds with its min-max (``col.speedup``,
    a ``mmspec.timing.Spread``), else the streamed run's throughput ratio over the baseline's."""
    s = stats_of(col.generation())
    speedup, low, high = None, None, None
    if col.speedup is not None:
        speedup, low, high = col.speedup.median, col.speedup.low, col.speedup.high
    elif base is not None and base.done and s["tokens_per_s"] > 0:
        speedup = s["tokens_per_s"] / stats_of(base.generation())["tokens_per_s"]
    return {"method": col.label, "new": s["new_tokens"], "wall_s": s["wall_s"], "per_s": s["tokens_per_s"],
            "mean_accepted": s["mean_accepted"], "acceptance_rate": s["acceptance_rate"], "speedup": speedup,
            "low": low, "high": high, "noise": low is not None and low <= 1.0 <= high and col is not base,
            "flags": list(col.flags), "per_step": s["accepted_per_step"]}


def speed_text(row: dict) -> str:
    """``1.42x [1.30-1.55]``, ``within noise (0.95-1.10)`` when the interval straddles 1, or ``1.42x``."""
    if row["speedup"] is None:
        return "—"
    if row["noise"]:
        return f"within noise ({row['low']:.2f}-{row['high']:.2f})"
    spread = "" if row["low"] is None else f" [{row['low']:.2f}-{row['high']:.2f}]"
    return f"{row['speedup']:.2f}x{spread}"


def stats_markdown(row: dict, unit: str, state: str) -> str:
    """``state``: "running", "stopped" or "done" (only a running column says so)."""
    speed = "—" if row["speedup"] is None else f"**{speed_text(row)}**"
    if row["flags"]:
        speed += "  \n_" + "; ".join(row["flags"]) + "_"
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


def bar_colors(rows: list[dict]) -> list[str]:
    """Grey for the baseline, anything that shows as 1.00x and anything within noise; green faster, red slower."""
    colors = [NEUTRAL]
    for r in rows[1:]:
        s = r["speedup"]
        shown = round(s or 0.0, 2)
        colors.append(NEUTRAL if s is None or shown == 1.0 or r["noise"] else FASTER if shown > 1.0 else SLOWER)
    return colors


def make_plot(rows: list[dict]):
    """Speedup bars and frames committed per step, one line per method; the legend sits below the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    names = [r["method"] for r in rows]
    speed = [r["speedup"] or 0.0 for r in rows]
    low = [s - (r["low"] if r["low"] is not None else s) for s, r in zip(speed, rows)]
    high = [(r["high"] if r["high"] is not None else s) - s for s, r in zip(speed, rows)]
    ax1.barh(names[::-1], speed[::-1], xerr=[low[::-1], high[::-1]], color=bar_colors(rows)[::-1])
    ax1.axvline(1.0, color="#374151", lw=0.8, ls="--")
    ax1.set_xlabel("speedup over baseline (median, min-max)")
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
             round(r["acceptance_rate"], 2), speed_text(r)] for r in rows]


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
