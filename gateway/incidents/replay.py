"""`meterwatch replay`: run a recorded trace through the site's rules in virtual time.

The engine is the one the daemon runs; only the clock differs. Between events the replay jumps straight to
the engine's next timer (next_wakeup), so hours of trace replay in milliseconds and give the same result as
ticking every second. A `tail` runs the timers past the last row (holds, calendar windows, correlation
waits), but the end of the recording is not evidence of silence: a device is judged silent only from what
the recording shows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Site
from gateway.core.durations import parse_duration
from gateway.core.types import Event
from gateway.incidents.site_model import build_engine
from gateway.incidents.trace import TraceError, load_mapping, read_trace
from rules.engine import Engine
from rules.model import Incident, IncidentChange, Transition


@dataclass
class ReplayResult:
    engine: Engine
    transitions: list[Transition]
    start: float
    end: float

    def incidents(self, include_merged: bool = False) -> list[Incident]:
        incs = sorted(self.engine.incidents.values(), key=lambda i: (i.opened_at, i.id))
        return [i for i in incs if include_merged or i.state != "merged"]

    def timeline(self, incident_id: int) -> list[IncidentChange]:
        return [t for t in self.transitions if isinstance(t, IncidentChange) and t.incident == incident_id]


def run_replay(
    site: Site, events: Iterable[Event], tail: float = 0.0, start: float | None = None
) -> ReplayResult:
    evs = list(events)
    t0 = start if start is not None else (evs[0].ts if evs else 0.0)
    engine = build_engine(site, start=t0)
    out: list[Transition] = []

    def advance(until: float, inclusive: bool) -> None:
        while True:
            w = engine.next_wakeup()
            if w is None or w > until or (w == until and not inclusive):
                return
            out.extend(engine.tick(w))

    i = 0
    while i < len(evs):
        ts = evs[i].ts
        advance(ts, inclusive=False)
        while i < len(evs) and evs[i].ts == ts:
            out.extend(engine.feed(evs[i]))
            i += 1
        out.extend(engine.tick(ts))
    last = evs[-1].ts if evs else t0
    engine.data_end = last  # the tail runs the timers on; the recording's end silences nobody
    end = last + tail
    advance(end, inclusive=True)
    out.extend(engine.tick(end))
    return ReplayResult(engine, out, t0, end)


def local_time(ts: float | None, tz: str) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat(timespec="seconds")


def incident_record(inc: Incident, tz: str) -> dict[str, Any]:
    return {
        "id": inc.id,
        "category": inc.category,
        "scope": inc.scope,
        "title": inc.title,
        "state": inc.state,
        "severity": inc.severity,
        "event_code": inc.event_code,
        "audiences": list(inc.audiences),
        "opened_at": local_time(inc.opened_at, tz),
        "first_evidence_at": local_time(inc.first_evidence_at, tz),
        "resolved_at": local_time(inc.resolved_at, tz),
        "households": inc.households,
        "symptoms": sorted(inc.symptoms),
        "flap_count": inc.flap_count,
        "flapping": inc.flapping,
        "reopen_count": inc.reopen_count,
        "absorbed": list(inc.absorbed),
        "merged_into": inc.merged_into,
    }


def json_lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def print_table(records: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("id", "category", "scope", "state", "opened", "resolved", "households", "symptoms", "flaps"):
        table.add_column(col, overflow="fold")
    for r in records:
        symptoms = r["symptoms"]
        shown = ", ".join(symptoms[:6]) + (f" +{len(symptoms) - 6}" if len(symptoms) > 6 else "")
        table.add_row(
            str(r["id"]),
            r["category"],
            r["scope"],
            r["state"],
            r["opened_at"] or "",
            r["resolved_at"] or "",
            str(r["households"]),
            shown,
            str(r["flap_count"]) + (" (flapping)" if r["flapping"] else ""),
        )
    # piped output has no terminal width: wide enough that times and scopes are never cut
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def replay_command(trace_path: Path, site: Site, mapping_path: Path | None, tail: str, as_json: bool) -> int:
    """`meterwatch replay`: the exit code; incidents on stdout, every problem on stderr."""
    try:
        tail_s = parse_duration(tail)
    except ValueError as exc:
        print(f"--tail: {exc}", file=sys.stderr)
        return 2
    tz = site.config.site.timezone
    try:
        mapping = load_mapping(mapping_path) if mapping_path is not None else None
        trace = read_trace(trace_path, tz, mapping)
    except TraceError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    unknown = sorted(trace.devices - {d.id for d in site.config.devices})
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10})" if len(unknown) > 10 else "")
        print(f"{trace_path}: devices not in the site file are ignored: {shown}", file=sys.stderr)
    result = run_replay(site, trace.events, tail=tail_s)
    records = [incident_record(i, tz) for i in result.incidents()]
    if as_json:
        sys.stdout.write(json_lines(records))
        return 0
    span = f"{local_time(result.start, tz)} .. {local_time(result.end, tz)} ({tz})"
    merged = len(result.incidents(include_merged=True)) - len(records)
    absorbed = f" ({merged} more absorbed into them)" if merged else ""
    print_table(records, f"{len(records)} incident(s){absorbed} from {trace_path.name}, {span}")
    return 0
