"""The cyclic garbage collector, set for a long-running daemon, and its pauses counted.

Why: profiles of issue 11 at 1,000-1,200 meters spent 18 % of CPU in the collector, and each full (gen-2)
collection stopped the event loop for 110-140 ms, because it walks every tracked object: the site, its
pydantic models, the planned reads, the pollers and the modules, which live as long as the process. And
young collections ran every 700 container allocations, while the hot path's containers (a Sample, its
values dict, a read's tuples) are freed by reference counting, not by the collector.

So, once the daemon has started (the site built, every component's task begun):
- `gc.collect()` then `gc.freeze()`: what exists then is moved to the permanent generation and never
  walked again. Objects frozen are not collected if they later become cyclic garbage; start-up objects live
  for the process anyway, and the soak (bench/soak.py) checks that memory does not drift.
- thresholds raised from Python's (700, 10, 10) to (TUNED_THRESHOLDS): a young collection every 20,000
  net container allocations instead of 700 (about 30 times fewer, each still a short walk of at most that
  many young objects, and that many objects of cyclic garbage is at most a few MB); the older generations
  keep Python's ratios, and CPython still runs a full collection only when the objects waiting for one are
  a quarter of the long-lived ones.

METERWATCH_GC selects the mode (default tuned):
- tuned: the above;
- default: Python's own settings, no freeze (the baseline, or a fallback should tuning ever misbehave);
- off: automatic collection disabled (cyclic garbage is never freed: for measurements only);
- three integers "g0,g1,g2": tuned with these thresholds.

Pauses are counted whatever the mode, in PAUSES (plain counters for /metrics): collections per generation,
gen-2 collections, the longest pause and the longest gen-2 pause, and the total paused.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("meterwatch.gc")

ENV = "METERWATCH_GC"
PYTHON_THRESHOLDS = (700, 10, 10)
TUNED_THRESHOLDS = (20_000, 10, 10)
Mode = Literal["tuned", "default", "off"]


@dataclass(frozen=True)
class GcSettings:
    mode: Mode
    thresholds: tuple[int, int, int]

    def describe(self) -> str:
        if self.mode == "off":
            return "automatic collection off"
        if self.mode == "default":
            return f"Python's defaults, thresholds {self.thresholds}"
        return f"tuned: start-up objects frozen, thresholds {self.thresholds}"


def settings_from_env(environ: Mapping[str, str] | None = None) -> GcSettings:
    """The settings METERWATCH_GC asks for. Raises ValueError saying what was wrong and what is accepted."""
    raw = (os.environ if environ is None else environ).get(ENV, "tuned")
    text = raw.strip().lower()
    if text in ("", "tuned"):
        return GcSettings("tuned", TUNED_THRESHOLDS)
    if text == "default":
        return GcSettings("default", PYTHON_THRESHOLDS)
    if text == "off":
        return GcSettings("off", PYTHON_THRESHOLDS)
    parts = text.split(",")
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or not all(n >= 1 for n in numbers) or numbers[0] > 10_000_000:
        raise ValueError(
            f"{ENV}={raw!r} is not a garbage-collector setting: expected tuned (the default), default, off, "
            "or three thresholds like 20000,10,10 (integers >= 1, the first at most 10000000)"
        )
    return GcSettings("tuned", (numbers[0], numbers[1], numbers[2]))


@dataclass
class GcPauses:
    """Collections and their pauses since count_pauses() (seconds; plain counters for /metrics)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # per generation
    gen2_collections: int = 0
    longest_pause_seconds: float = 0.0
    gen2_longest_pause_seconds: float = 0.0
    pause_seconds_total: float = 0.0
    collected_total: int = 0  # objects freed by the collector
    _began: float = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        generation = info.get("generation", 2)
        self.collections[generation] += 1
        self.collected_total += info.get("collected", 0)
        self.pause_seconds_total += pause
        if pause > self.longest_pause_seconds:
            self.longest_pause_seconds = pause
        if generation == 2:
            self.gen2_collections += 1
            if pause > self.gen2_longest_pause_seconds:
                self.gen2_longest_pause_seconds = pause


PAUSES = GcPauses()


def summary() -> dict[str, float | int]:
    """PAUSES as flat fields (a log line at exit; bench/soak.py reads it)."""
    p = PAUSES
    return {
        "gc_collections_gen0": p.collections[0],
        "gc_collections_gen1": p.collections[1],
        "gc_collections_gen2": p.gen2_collections,
        "gc_longest_pause_ms": round(1000 * p.longest_pause_seconds, 2),
        "gc_gen2_longest_pause_ms": round(1000 * p.gen2_longest_pause_seconds, 2),
        "gc_pause_seconds_total": round(p.pause_seconds_total, 4),
        "gc_collected_total": p.collected_total,
    }


def count_pauses() -> None:
    """Count every collection in PAUSES from now on (idempotent)."""
    if PAUSES.on_gc not in gc.callbacks:
        gc.callbacks.append(PAUSES.on_gc)


def apply(settings: GcSettings) -> None:
    """Set the collector as `settings` says; call once start-up is over (see the module docstring)."""
    count_pauses()
    if settings.mode == "off":
        gc.disable()
    elif settings.mode == "default":
        gc.set_threshold(*settings.thresholds)
    else:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*settings.thresholds)
        gc.enable()
    log.info(
        "garbage collector set",
        extra={"fields": {"gc": settings.describe(), "frozen": gc.get_freeze_count()}},
    )


class AfterStart:
    """A daemon component that applies `settings` once every component before it has begun running.

    It is added last: tasks start in order, so when this one first runs, the others have built what they
    keep for the life of the process (their first step), and freezing it now keeps it out of every
    later collection.
    """

    name = "gc"

    def __init__(self, settings: GcSettings) -> None:
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(0)  # one more turn: what the other tasks' first steps scheduled has run too
        apply(self.settings)
        await stop.wait()
