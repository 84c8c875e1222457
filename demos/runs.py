"""One tab's Run: check everything, load the served models, then decode the baseline and each method with
the same seed, streaming the UI tuple (``views.outputs``) as the columns fill. Bad input never raises: it
yields a status line starting with "**Error:**" and stops.
"""
from __future__ import annotations

import threading
import time

import torch

from mmspec import generate, methods, modalities, timing
from mmspec.modalities import Modality

from . import views
from .serving import UI_EVERY_S, Column, Inputs, Server, check_inputs, options, plan, run_column

EMPTY = ("", [], None) + ("", None, "") * views.COLUMNS


def run_tab(server: Server, name: str, inputs: Inputs, progress=None, stop: threading.Event | None = None):
    """Generator behind one tab's Run; ``stop`` (the Stop button) ends it after the current step."""
    try:
        mod = modalities.get(name)
        sampling = check_inputs(server, mod, inputs)
        todo = plan(mod, inputs, sampling.temperature)
        opts = options(mod, inputs.knobs)
        prompts = mod.prompts(inputs.prompt, 1)
        target_name = server.check_model(mod, inputs.target)
        draft_name = server.check_model(mod, inputs.draft) if any(methods.needs_draft(d) for d, _, _ in todo) else None
        yield (f"Loading **{target_name}**…",) + EMPTY[1:]
        target = server.load(mod, target_name, opts)
        draft = server.load(mod, draft_name, opts) if draft_name else None
        if draft is not None:
            target.check_draft(draft)
        for drafter, rule, tree in todo:  # every name and rule builds before the long part
            methods.make_drafter(drafter, mod, target=target, draft=draft, init=inputs.init, options=opts, tree=tree,
                                 cache=server.models.cache)
            methods.make_rule(rule, mod, target, opts)
        yield from _run_plan(server, mod, target, draft, todo, prompts, opts, sampling, inputs, progress, stop)
    except Exception as err:  # noqa: BLE001 - bad names, paths, values or a model the adapter refuses: say so
        msg = str(err).strip().strip('"') if isinstance(err, (ValueError, OSError, KeyError)) else \
            f"{type(err).__name__}: {err}"
        yield (f"**Error:** {msg or type(err).__name__}",) + EMPTY[1:]


def _run_plan(server, mod: Modality, target, draft, todo, prompts, opts, sampling, inputs, progress, stop):
    """Baseline, then each method, same seed; each column streams; then the table, plot and banners."""
    cols: list[Column] = []
    greedy, max_new = sampling.greedy, int(inputs.max_new)
    for i, (drafter_name, rule_name, tree) in enumerate(todo):
        col = Column(drafter_name, rule_name, tree)
        cols.append(col)
        drafter = methods.make_drafter(drafter_name, mod, target=target, draft=draft, init=inputs.init, options=opts,
                                       tree=tree, cache=server.models.cache)
        rule = methods.make_rule(rule_name, mod, target, opts)
        last = 0.0
        for _ in run_column(server, col, target, drafter, draft, prompts, rule=rule, sampling=sampling,
                            k=int(inputs.k), max_new=max_new, seed=int(inputs.seed)):
            if stop is not None and stop.is_set():
                cols += [Column(d, r, t) for d, r, t in todo[len(cols):]]
                for c in cols:
                    c.stopped = not c.done
                yield views.outputs(mod, target, views.STOPPED, cols, greedy)
                return
            if progress is not None:
                progress((i + min(col.made / max_new, 1.0)) / len(todo), desc=f"{col.label}: {col.made}/{max_new}")
            if col.done or time.perf_counter() - last > UI_EVERY_S:
                last = time.perf_counter()
                status = f"Running {i + 1}/{len(todo)}: **{col.label}** — {col.made}/{max_new} {mod.unit}"
                yield views.outputs(mod, target, status, cols, greedy)
    if inputs.rounds:
        yield views.outputs(mod, target, f"Timing {int(inputs.rounds)} interleaved rounds…", cols, greedy)
        _time_rounds(server, mod, target, draft, cols, prompts, opts, sampling, inputs)
    rows = [views.stats_row(c, cols[0]) for c in cols[1:]]
    summary = ", ".join(f"{r['method']} **{views.speed_text(r)}**" for r in rows if r["speedup"])
    device = f"{torch.device(target.device).type}, {torch.get_num_threads()} threads"
    how = f"median of {int(inputs.rounds)} interleaved rounds" if inputs.rounds else "one streamed run"
    status = f"Done on {device} (seed {inputs.seed}). Speedup over baseline ({how}): {summary or '—'}"
    yield views.outputs(mod, target, status, cols, greedy, final=True)


def _time_rounds(server, mod, target, draft, cols, prompts, opts, sampling, inputs) -> None:
    """Every column again, in interleaved rounds (``mmspec.timing``, as ``mmspec compare`` and ``mmspec bench``
    do): each column's speedup is the median over rounds of the baseline's time over its own, with trust flags."""
    def call(col):
        def once():
            drafter = methods.make_drafter(col.drafter, mod, target=target, draft=draft, init=inputs.init,
                                           options=opts, tree=col.tree, cache=server.models.cache)
            with server.locks.hold(target, draft):
                return generate(target, drafter, prompts, max_new_tokens=int(inputs.max_new), k=int(inputs.k),
                                rule=methods.make_rule(col.rule, mod, target, opts), sampling=sampling,
                                seed=int(inputs.seed))
        return once

    timed = timing.interleave({i: call(c) for i, c in enumerate(cols)}, int(inputs.rounds), warmup=0)
    base = [g.wall_s for g in timed[0]]
    env = timing.machine(target.device)
    for i, col in enumerate(cols):
        seconds = [g.wall_s for g in timed[i]]
        col.speedup = timing.ratio_spread(base, seconds)
        col.flags = [] if i == 0 else timing.flags(col.speedup, seconds, env)
