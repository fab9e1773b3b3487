"""`make bench`: every benchmark of the project in one run, one table, one JSON file.

Each part is its own script, run here as a subprocess with arguments sized so the whole run takes under 15
minutes on the 2-core development machine; the last JSON line of its stdout is parsed, tolerant of keys it
does not know. A part that fails, or whose JSON lacks a key a row needs, shows that in its row (which
script, which key) and the run goes on. Every figure stands beside a baseline measured in the same run:

- polling (bench/poll.py, meters served by the C server bench/cmeter): the gateway's requests per CPU-second
  beside a raw asyncio loop and bare pymodbus; values per CPU-second beside ThingsBoard IoT Gateway 3.8.5;
  the capacity at 1 s (bounded search); RSS at 1,000 devices beside the raw loop;
- MQTT ingest (bench/mqtt_ingest.py): messages/s at QoS 0 and 1 beside a bare paho subscriber;
- sink (bench/sink.py --quick): points per CPU-second beside raw influxdb-client;
- rules engine (bench/rules.py): samples/s beside a plain Python loop doing the default rules' simple
  comparisons (rules_floor below: a floor, not an equal; the engine also correlates and keeps incidents);
- outage -> first staff notice (bench/notify_latency.py): beside Prometheus + Alertmanager on the same cuts;
- RSS drift over a short soak (bench/soak.py): MiB/h extrapolated from minutes, no baseline.
The CPU-light parts (notice latency and soak, which mostly wait) run side by side at the end; the others
run alone, one after the other.

Writes bench/results/latest.json and a dated copy (or into --out): the table's rows, every part's JSON,
the date, the machine (nproc, CPU model, Python), the load before and after, and the meter server.

    .venv/bin/python bench/run_all.py [--smoke] [--out DIR] [--only poll,mqtt]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass
class Part:
    name: str
    script: str
    full: list[str]
    smoke: list[str]
    timeout: float  # seconds, full run (smoke: the same bound)
    background: bool = False  # mostly waits: runs beside the other background parts at the end


PARTS = [
    Part(
        "poll",
        "bench/poll.py",
        [
            "--meters",
            "800",
            "--steps",
            "1000,1600,2400,3200,4000",
            "--pipelined-steps",
            "3200,4000,5000,6000",
            "--budget",
            "90",
            "--warmup",
            "4",
            "--window",
            "8",
        ],
        [
            "--meters",
            "5",
            "--steps",
            "5",
            "--pipelined-steps",
            "5",
            "--rss-devices",
            "5",
            "--warmup",
            "1",
            "--window",
            "2",
            "--no-tb",
        ],
        480,
    ),
    Part(
        "mqtt", "bench/mqtt_ingest.py", ["--messages", "20000", "--repeats", "1"], ["--messages", "300"], 300
    ),
    Part("sink", "bench/sink.py", ["--quick"], ["--quick"], 240),
    Part(
        "rules",
        "bench/rules.py",
        ["--devices", "1000", "--seconds", "300", "--no-live"],
        ["--devices", "20", "--seconds", "30", "--no-live"],
        180,
    ),
    Part(
        "rules_floor",
        "bench/run_all.py",
        ["--rules-floor", "1000,300"],
        ["--rules-floor", "20,30"],
        120,
    ),
    Part(
        "notify",
        "bench/notify_latency.py",
        ["--runs", "3", "--prom-runs", "2", "--quiet"],
        ["--runs", "1", "--prom-runs", "1", "--prom-interval", "1s", "--group-wait", "0s", "--quiet"],
        420,
        background=True,
    ),
    Part(
        "soak",
        "bench/soak.py",
        ["--minutes", "5", "--interval", "10"],
        ["--minutes", "1", "--interval", "5"],
        480,
        True,
    ),
]
SMOKE_SKIPS = {
    "thingsboard": "ThingsBoard IoT Gateway is skipped in --smoke (its venv and start take minutes)"
}


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Outcome:
    name: str
    script: str
    seconds: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None
    args: list[str] = field(default_factory=list)


def last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def start(part: Part, smoke: bool, log_dir: Path) -> tuple[subprocess.Popen[str], Outcome, float]:
    args = part.smoke if smoke else part.full
    out = Outcome(part.name, part.script, args=args)
    print(f"-- {part.name}: {part.script} {' '.join(args)}", flush=True)
    log = (log_dir / f"{part.name}.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / part.script), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
    )
    return proc, out, time.monotonic()


def finish(proc: subprocess.Popen[str], out: Outcome, began: float, timeout: float, log_dir: Path) -> Outcome:
    try:
        stdout, _ = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - began)))
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
        out.error = f"timed out after {timeout:.0f} s"
    out.seconds = round(time.monotonic() - began, 1)
    for line in stdout.splitlines():
        if not line.startswith("{"):
            print(f"   {line}", flush=True)
    out.result = last_json(stdout)
    if out.error is None and proc.returncode != 0:
        err = (log_dir / f"{out.name}.err").read_text(errors="replace").strip().splitlines()
        out.error = f"exit {proc.returncode}: {' / '.join(err[-3:])[-400:]}"
    if out.error is None and out.result is None:
        out.error = "printed no JSON line"
    print(f"   ({out.name}: {out.seconds} s{', ' + out.error if out.error else ''})", flush=True)
    return out


def run_parts(parts: list[Part], smoke: bool, log_dir: Path) -> dict[str, Outcome]:
    """One after the other, then the background parts side by side; in --smoke all at once (its figures
    mean nothing, only that every part runs and every row gets its value)."""
    done: dict[str, Outcome] = {}
    for part in (p for p in parts if not p.background and not smoke):
        proc, out, began = start(part, smoke, log_dir)
        done[part.name] = finish(proc, out, began, part.timeout, log_dir)
    running = [(p, *start(p, smoke, log_dir)) for p in parts if p.background or smoke]
    for part, proc, out, began in running:
        done[part.name] = finish(proc, out, began, part.timeout, log_dir)
    return done


# --------------------------------------------------------------------------------------------------- table


class Missing(Exception):
    pass


def pick(outcomes: dict[str, Outcome], part: str, path: str) -> Any:
    """The value at `path` (dots; a number indexes a list) in `part`'s JSON; Missing says what and where."""
    o = outcomes.get(part)
    if o is None:
        raise Missing(f"n/a ({part} not run)")
    if o.result is None:
        raise Missing(f"FAILED: {o.error}")
    value: Any = o.result
    for key in [*path.split("."), ""]:
        # a measurement a part could not take says so in its place: {"error": ...} or {"skipped": ...}
        if isinstance(value, dict) and "error" in value and key not in value:
            raise Missing(f"FAILED: {value['error']}"[:300])
        if isinstance(value, dict) and "skipped" in value and key not in value:
            raise Missing(f"n/a (skipped: {value['skipped']})")
        if not key:
            break
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise Missing(f"n/a (missing key {path} from {o.script})")
    if value is None:
        raise Missing(f"n/a ({path} is null in {o.script})")
    return value


@dataclass
class Row:
    figure: str
    meterwatch: str
    baseline: str
    ratio: str
    baseline_is: str
    values: dict[str, Any] = field(default_factory=dict)


def cell(fn: Callable[[], Any], fmt: str) -> tuple[str, Any]:
    try:
        value = fn()
    except Missing as exc:
        return str(exc), None
    if isinstance(value, int | float):
        return format(value, fmt), value
    return str(value), value


def row(
    figure: str,
    mw: Callable[[], Any],
    base: Callable[[], Any] | None,
    baseline_is: str,
    fmt: str = ",.0f",
    lower_is_better: bool = False,
) -> Row:
    mw_text, mw_value = cell(mw, fmt)
    base_text, base_value = cell(base, fmt) if base else ("none", None)
    ratio: float | None = None
    if isinstance(mw_value, int | float) and isinstance(base_value, int | float) and base_value:
        ratio = mw_value / base_value
    ratio_text = (
        "n/a" if ratio is None else f"{ratio:.2f}" + (" (lower is better)" if lower_is_better else "")
    )
    values = {
        "meterwatch_value": mw_value,
        "baseline_value": base_value,
        "ratio_value": None if ratio is None else round(ratio, 3),
    }
    return Row(figure, mw_text, base_text, ratio_text, baseline_is, values)


def rows(o: dict[str, Outcome]) -> list[Row]:
    def p(part: str, path: str) -> Callable[[], Any]:
        return lambda: pick(o, part, path)

    def capacity(key: str = "capacity") -> Callable[[], str]:
        def text() -> str:
            n = pick(o, "poll", f"{key}.max_devices_no_overrun")
            cpu = pick(o, "poll", f"{key}.cpu_percent")
            cap = (o["poll"].result or {}).get(key, {})
            first = cap.get("first_overrun_devices")
            stop = (
                f"first overrun at {first:,}" if first else f"search stopped by {cap.get('stopped_by', '?')}"
            )
            return f"{n:,} meters ({cpu}% CPU; {stop})"

        return text

    def soak_slope() -> Any:
        try:
            return pick(o, "soak", "rss_slope_mib_per_h_after_warmup")
        except Missing:
            return pick(o, "soak", "runs.0.rss_slope_mib_per_h_after_warmup")

    def soak_minutes() -> Any:
        try:
            return pick(o, "soak", "minutes")
        except Missing:
            return pick(o, "soak", "runs.0.minutes")

    n_meters = (o["poll"].result or {}).get("meters", "N") if "poll" in o else "N"
    rss_n = ((o["poll"].result or {}).get("rss") or {}).get("devices", 1000) if "poll" in o else 1000
    same_server = "on the same C meter server"
    try:
        minutes = f"{soak_minutes():g}-minute"
    except Missing:
        minutes = "short"
    return [
        row(
            f"Modbus polling, requests per CPU-second ({n_meters} SDM630 at 1 s, 3 reads each)",
            p("poll", "side_by_side.gateway.requests_per_cpu_s"),
            p("poll", "side_by_side.raw_asyncio.requests_per_cpu_s"),
            f"raw asyncio loop (struct MBAP + FC04, readexactly, float32 unpack) {same_server}",
        ),
        row(
            "Modbus polling, requests per CPU-second, beside pymodbus",
            p("poll", "side_by_side.gateway.requests_per_cpu_s"),
            p("poll", "side_by_side.pymodbus.requests_per_cpu_s"),
            f"bare pymodbus AsyncModbusTcpClient, the same reads, {same_server}",
        ),
        row(
            f"Modbus polling, values decoded per CPU-second ({n_meters} meters)",
            p("poll", "side_by_side.gateway.values_per_cpu_s"),
            p("poll", "side_by_side.thingsboard.values_per_cpu_s"),
            "ThingsBoard IoT Gateway 3.8.5 (9 values per meter, one request each) " + same_server,
        ),
        row(
            f"Modbus polling, RSS MiB at {n_meters} meters",
            p("poll", "side_by_side.gateway.rss_mib"),
            p("poll", "side_by_side.thingsboard.rss_mib"),
            "ThingsBoard IoT Gateway 3.8.5, the same meters",
            ",.1f",
            lower_is_better=True,
        ),
        row(
            "Modbus polling, largest N at 1 s without overrun",
            capacity(),
            None,
            "none: bounded search (steps until the first overrun or the time budget)",
        ),
        row(
            "Modbus polling, requests per CPU-second at that largest N",
            p("poll", "at_capacity.gateway.requests_per_cpu_s"),
            p("poll", "at_capacity.raw_asyncio.requests_per_cpu_s"),
            f"raw asyncio loop at the same N {same_server}",
        ),
        row(
            "Modbus polling with `pipeline: 3` (a cycle's 3 reads in one write), requests per CPU-second",
            p("poll", "side_by_side.gateway_pipelined.requests_per_cpu_s"),
            p("poll", "side_by_side.raw_pipelined.requests_per_cpu_s"),
            f"raw asyncio loop writing each cycle's 3 requests at once {same_server}",
        ),
        row(
            "Modbus polling with `pipeline: 3`, largest N at 1 s without overrun",
            capacity("capacity_pipelined"),
            None,
            "none: bounded search (steps until the first overrun or the time budget)",
        ),
        row(
            "MQTT ingest QoS 0, messages/s",
            p("mqtt", "qos0.gateway.per_s"),
            p("mqtt", "qos0.paho.per_s"),
            "bare paho subscriber + json.loads, same broker and messages",
        ),
        row(
            "MQTT ingest QoS 1, messages/s",
            p("mqtt", "qos1.gateway.per_s"),
            p("mqtt", "qos1.paho.per_s"),
            "bare paho subscriber + json.loads, same broker and messages",
        ),
        row(
            "Spool-first sink, points per CPU-second",
            p("sink", "per_point.sink_points_per_cpu_s"),
            p("sink", "per_point.raw_points_per_cpu_s"),
            "raw influxdb-client writing line protocol to the same VictoriaMetrics",
        ),
        row(
            "Rules engine, samples/s (10 quantities each, default rules)",
            p("rules", "throughput.samples_per_s"),
            p("rules_floor", "samples_per_s"),
            "a floor: plain Python loop doing the default rules' simple comparisons on the same samples",
        ),
        row(
            "Outage -> first staff notice, median s (same cuts)",
            p("notify", "prometheus_alertmanager.meterwatch_same_runs_median_s"),
            p("notify", "prometheus_alertmanager.median_s"),
            "Prometheus + Alertmanager (Debian) on the same simulated cuts, to a webhook",
            ",.1f",
            lower_is_better=True,
        ),
        row(
            f"RSS MiB at {rss_n:,} devices",
            p("poll", "rss.gateway_rss_mib"),
            p("poll", "rss.raw_asyncio_rss_mib"),
            "raw asyncio loop polling the same meters",
            ",.1f",
            lower_is_better=True,
        ),
        row(
            f"RSS drift over a {minutes} soak, MiB/h (extrapolated)",
            soak_slope,
            None,
            "none: least-squares slope after warm-up, extrapolated from minutes to an hour",
            ",.1f",
        ),
    ]


def table(rs: list[Row]) -> str:
    lines = ["| figure | meterwatch | baseline | ratio | baseline is |", "|---|---|---|---|---|"]
    lines += [f"| {r.figure} | {r.meterwatch} | {r.baseline} | {r.ratio} | {r.baseline_is} |" for r in rs]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# ------------------------------------------------------------------------------------ rules floor (worker)


def rules_floor(devices: int, seconds: int) -> dict[str, Any]:
    """The samples bench/rules.py feeds its engine, through a plain loop: per sample the phase voltages
    against the outage / undervoltage / overvoltage bounds and pressure below 1.0 (clear above 1.5), each
    with a held-since time per device and rule, and per tick an absence check of the devices due; no
    correlation, incidents, sequences, rates or stuck checks (what the engine adds is not here)."""
    import importlib.util
    import math

    spec = importlib.util.spec_from_file_location("bench_rules_script", ROOT / "bench" / "rules.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    topo = mod.build_topology(devices)
    batches = list(mod.samples(topo, seconds, True))
    n = sum(len(b) for _, b in batches)
    bounds = (
        ("outage", -math.inf, 50.0, 5.0),
        ("under", 50.0, 207.0, 300.0),
        ("over", 253.0, math.inf, 60.0),
    )
    held: dict[tuple[str, str], float] = {}
    last_seen: dict[str, float] = {}
    fired = 0
    interval = mod.INTERVAL
    t0 = time.perf_counter()
    for t, batch in batches:
        for s in batch:
            last_seen[s.device] = t
            v = s.values
            volts = (
                v.get("voltage_l1", math.nan),
                v.get("voltage_l2", math.nan),
                v.get("voltage_l3", math.nan),
            )
            for name, lo, hi, hold in bounds:
                key = (s.device, name)
                if all(lo <= x < hi for x in volts):
                    since = held.setdefault(key, t)
                    fired += t - since >= hold
                else:
                    held.pop(key, None)
            p = v.get("pressure")
            if p is not None:
                key = (s.device, "pressure")
                if p < 1.0:
                    since = held.setdefault(key, t)
                    fired += t - since >= 30.0
                elif p > 1.5:
                    held.pop(key, None)
        for seen in last_seen.values():
            fired += t - seen > interval + 5.0
    elapsed = time.perf_counter() - t0
    return {
        "bench": "rules_floor",
        "devices": devices,
        "samples": n,
        "elapsed_s": round(elapsed, 3),
        "samples_per_s": round(n / elapsed),
        "conditions_true": fired,
    }


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds per part), ThingsBoard skipped")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and the dated copy go")
    ap.add_argument("--only", help="comma-separated part names (poll, mqtt, sink, rules, notify, soak)")
    ap.add_argument("--rules-floor", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rules_floor:
        devices, seconds = (int(x) for x in args.rules_floor.split(","))
        print(json.dumps(rules_floor(devices, seconds)))
        return

    parts = PARTS
    if args.only:
        wanted = set(args.only.split(","))
        if "rules" in wanted:
            wanted.add("rules_floor")
        unknown = wanted - {p.name for p in PARTS}
        if unknown:
            ap.error(f"--only: unknown parts {sorted(unknown)}; known: {[p.name for p in PARTS]}")
        parts = [p for p in PARTS if p.name in wanted]
    now = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meterwatch-bench-all-") as logs:
        outcomes = run_parts(parts, args.smoke, Path(logs))
    load_after = os.getloadavg()
    rs = rows(outcomes)
    server = (outcomes["poll"].result or {}).get("server") if "poll" in outcomes else None
    limit = ((outcomes["poll"].result or {}).get("server_limit") or {}) if "poll" in outcomes else {}
    header = (
        f"meterwatch bench, {now:%Y-%m-%d %H:%M} UTC"
        f"{' (SMOKE: tiny sizes, not figures)' if args.smoke else ''}"
        f"; {machine()['nproc']} cores ({machine()['cpu_model']}), Python {platform.python_version()}; load "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.monotonic() - began:.0f} s"
    )
    served = f"meters served by: {server or 'n/a'}"
    if limit.get("server_requests_per_cpu_s"):
        served += (
            f"; its limit: {limit['requests_per_s']:,.0f} requests/s at {limit['server_cpu_percent']}% of a"
            " core"
            f" = {limit['server_requests_per_cpu_s']:,} per server CPU-second"
        )
    print()
    print(header)
    print(served)
    print(table(rs))
    doc = {
        "bench": "all",
        "date": now.isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "load_avg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "elapsed_s": round(time.monotonic() - began, 1),
        "meter_server": server,
        "meter_server_limit": limit or None,
        "skipped_in_smoke": SMOKE_SKIPS if args.smoke else {},
        "rows": [
            {
                "figure": r.figure,
                "meterwatch": r.meterwatch,
                "baseline": r.baseline,
                "ratio": r.ratio,
                "baseline_is": r.baseline_is,
                **r.values,
            }
            for r in rs
        ],
        "parts": {
            name: {
                "script": o.script,
                "args": o.args,
                "seconds": o.seconds,
                "error": o.error,
                "result": o.result,
            }
            for name, o in outcomes.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1) + "\n"
    (args.out / "latest.json").write_text(text, encoding="utf-8")
    (args.out / f"{now:%Y-%m-%dT%H%M%SZ}.json").write_text(text, encoding="utf-8")
    print(f"written: {args.out / 'latest.json'} and {args.out / f'{now:%Y-%m-%dT%H%M%SZ}.json'}")


if __name__ == "__main__":
    main()
