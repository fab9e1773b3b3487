"""A debug tap: every Sample published on the bus, appended to a JSON-lines file (`meterwatch run --tap`).

One line per sample: {"device": "...", "ts": 1700000000.123, "values": {"voltage_l1": 230.1}, "quality":
"good"}. Floats are written with repr, so they read back bit for bit; NaN and infinities are written as the
JSON extensions NaN/Infinity that Python's json module reads.

Why it exists: to check from outside the process that what the gateway polled is what the database holds
(tests/gateway/sink/test_e2e_kill.py kills the daemon with SIGKILL and compares). It is a BLOCKING
subscriber, like the sink: it sees every sample, in the order the sink sees them, and a slow disk slows
the sources down.
Each sample is written with one write() and no fsync: the lines survive the process being killed (they are
in the kernel), not a power cut. A debugging aid, not a second store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.core.bus import Bus, Subscription
from gateway.core.types import Event, Sample

TAP_QUEUE = 20_000


def sample_to_json(s: Sample) -> str:
    return json.dumps({"device": s.device, "ts": s.ts, "values": dict(s.values), "quality": s.quality})


def sample_from_json(line: str) -> Sample:
    rec = json.loads(line)
    values = {str(k): float(v) for k, v in rec["values"].items()}
    return Sample(str(rec["device"]), float(rec["ts"]), values, rec["quality"])


def read_tap(path: Path) -> list[Sample]:
    """The samples of a tap file, in bus order. A torn last line (the writer was killed mid-write) is
    ignored: that sample was never complete on disk."""
    out: list[Sample] = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            out.append(sample_from_json(line))
    return out


class SampleTap:
    name = "sample-tap"

    def __init__(self, bus: Bus, path: Path) -> None:
        self.path = path
        self.sub: Subscription = bus.subscribe(self.name, maxsize=TAP_QUEUE, overflow="block")
        self.written = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8", buffering=1) as fh:
            while True:
                ev = self.sub.get_nowait()
                if ev is None:
                    if stop.is_set():
                        return
                    ev = await self._next(stop)
                    if ev is None:
                        continue
                if isinstance(ev, Sample):
                    fh.write(sample_to_json(ev) + "\n")  # line-buffered: one write() per sample
                    self.written += 1

    async def _next(self, stop: asyncio.Event) -> Event | None:
        return await self.sub.get_until(stop)
