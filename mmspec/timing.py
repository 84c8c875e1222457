"""Timing that survives a busy machine: warm-up, interleaved rounds, median and spread, and trust flags.

One implementation for ``mmspec compare``, ``mmspec bench``, the app and the notebooks:

* ``interleave(runs, repeats)`` warms every method up once, then times ``repeats`` rounds A B C, A B C, ...
  so that drift and background load hit every method alike;
* ``Spread`` is the median with the min-max range of a list of values; ``ratio_spread`` summarises a
  speedup computed per round (baseline time of the round / method time of the same round);
* ``flags`` says when a result cannot be trusted: an interval that straddles 1, a spread wider than the
  effect, runs too short to time, or a CPU shared with other busy processes (the 1-minute load average
  above the threads in use, with half a thread of slack).

Step compression (frames committed per target forward) does not depend on the machine; ``report``
shows it next to every wall-clock figure.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

MIN_SECONDS = 0.05  # a timed run shorter than this is dominated by timer and scheduler noise


@dataclass(frozen=True)
class Spread:
    """Median and min-max of a list of measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        if not values:
            raise ValueError("no measurements to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def straddles(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}-{self.high:.2f}]"


def interleave(runs: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
               progress: Callable[[str, int], None] | None = None) -> dict[str, list]:
    """Call every run ``warmup`` times, then ``repeats`` rounds of each in turn; returns the timed results.

    ``progress(name, round)`` is called before each call (round 0 is the warm-up)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    for _ in range(warmup):
        for name, run in runs.items():
            if progress:
                progress(name, 0)
            run()
    out: dict[str, list] = {name: [] for name in runs}
    for r in range(1, repeats + 1):
        for name, run in runs.items():
            if progress:
                progress(name, r)
            out[name].append(run())
    return out


def ratio_spread(base_seconds: list[float], seconds: list[float]) -> Spread:
    """The speedup of each round (baseline's time / the method's time in the same round), summarised."""
    return Spread.of([b / s if s > 0 else 0.0 for b, s in zip(base_seconds, seconds)])


def machine(device) -> dict:
    """Device, torch threads and the 1-minute load average (None where the platform has none)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_1min": load}


def flags(speedup: Spread, seconds: list[float], env: dict) -> list[str]:
    """Why a speedup may not be trustworthy (empty when it looks solid)."""
    out = []
    if speedup.n > 1 and speedup.straddles(1.0):
        out.append("within noise (the spread straddles 1.00x)")
    if speedup.n > 1 and speedup.high - speedup.low > abs(speedup.median - 1.0):
        out.append("spread wider than the effect")
    if seconds and min(seconds) < MIN_SECONDS:
        out.append(f"runs shorter than {MIN_SECONDS:g} s: too short to time well")
    busy, threads = env.get("load_1min"), env.get("threads") or 1
    if str(env.get("device", "cpu")).startswith("cpu") and busy is not None and busy > threads + 0.5:
        out.append(f"shared CPU: load average {busy:.1f} above the {threads} threads in use")
    return out
