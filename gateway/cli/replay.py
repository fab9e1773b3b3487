"""`meterwatch replay`: run a recorded trace through the site's rules (gateway/incidents/replay.py) and print
the incidents, as a table or as JSON lines; `meterwatch incidents` prints the daemon's the same way."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from gateway.cli.common import load_or_exit
from gateway.config import Site
from gateway.core.durations import parse_duration
from gateway.core.timefmt import local_iso


def replay(
    trace: Path = typer.Argument(..., help="long CSV ts,device,quantity,value; or a wide CSV with --mapping"),
    config: Path = typer.Option(..., "--config", help="site file (YAML) whose rules and topology to use"),
    as_json: bool = typer.Option(False, "--json", help="one JSON line per incident instead of a table"),
    mapping: Path | None = typer.Option(None, help="column mapping of a wide CSV (YAML)"),
    tail: str = typer.Option("0s", help="run the timers on this long past the last row, e.g. 5m"),
    strict: bool = typer.Option(
        False, "--strict", help="judge every device of the site, also those the trace never mentions"
    ),
) -> None:
    """Run a recorded trace through the site's rules in virtual time and print the incidents."""
    site = load_or_exit(config)
    raise typer.Exit(replay_command(trace, site, mapping, tail, as_json, strict))


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
            r["category"] + (" (drill 演练)" if r.get("drill") else ""),
            r["scope"],
            r["state"],
            r["opened_at"] or "",
            r["resolved_at"] or "",
            str(r["households"]),
            shown,
            str(r["flap_count"]) + (" (flapping)" if r["flapping"] else ""),
        )
    # piped output has no terminal width: wide enough that times and scopes are never cut
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    # why each one is what it is: an outage or a communication fault must be told apart at a glance
    for r in records:
        for line in r.get("evidence") or []:
            console.print(f"#{r['id']} {r['category']} {r['scope']}: {line}", highlight=False, soft_wrap=True)


def replay_command(
    trace_path: Path, site: Site, mapping_path: Path | None, tail: str, as_json: bool, strict: bool = False
) -> int:
    """`meterwatch replay`: the exit code; incidents on stdout, every problem on stderr."""
    from gateway.incidents.replay import incident_record, run_replay, scope_to_trace
    from gateway.incidents.trace import TraceError, load_mapping, read_trace

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
    site, warnings = scope_to_trace(site, trace.events, strict)
    for w in warnings:
        print(f"{trace_path}: {w}", file=sys.stderr)
    result = run_replay(site, trace.events, tail=tail_s)
    records = [incident_record(i, tz) for i in result.incidents()]
    if as_json:
        sys.stdout.write(json_lines(records))
        return 0
    span = f"{local_iso(result.start, tz)} .. {local_iso(result.end, tz)} ({tz})"
    merged = len(result.incidents(include_merged=True)) - len(records)
    absorbed = f" ({merged} more absorbed into them)" if merged else ""
    print_table(records, f"{len(records)} incident(s){absorbed} from {trace_path.name}, {span}")
    return 0
