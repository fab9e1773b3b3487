"""Soak: does the gateway's memory, fd or thread count grow while it runs for minutes through outages?

The real `meterwatch run` (a child process, watched from outside through /proc and its /metrics) polls a site
of 100 simulated devices every second: 10 buildings, each with a Modbus TCP meter gateway of 8 SDM630s,
and in B01-B04 an RS-485 device server (RTU over TCP, 19200 baud, powered by its building) with 5 devices
(a DTSU666 pump meter, two SDM120 unit meters, two pressure transmitters). The simulators run in their own
process (`meterwatch simulate`, with a scenario written for the run's length); the samples go to a real
VictoriaMetrics through the spool.

Phases, as fractions of --minutes (6 by default):
  [0, 1/6)      normal: warm-up (connections, first cycles, caches fill)
  [1/6, 1/2)    VictoriaMetrics stopped: the spool grows
  [1/2, 1)      VictoriaMetrics back: the spool drains; at 0.6 building B02 loses mains power for 30 s:
                its SDM630s read 0 V, its RS-485 device server (powered by the building) goes silent, so
                requests time out and connections are dropped and reopened; one power_outage incident opens,
                then resolves 15 s after the restore

Every --interval seconds (10): the gateway's RSS (VmRSS), open fds, threads, CPU % since the last sample,
and from /metrics the spool's points and bytes, the bus queue depths, samples published and points written.
At the end the simulators stop, the gateway drains its spool, and the points VictoriaMetrics holds are
counted against the samples the gateway published.

Prints one human line per sample, a summary (RSS at start, after warm-up and at the end; least-squares RSS
slope in MiB per hour over the post-warm-up window and over the last phase alone; fds and threads at start
and end; spool peak; incidents; delivered yes/no) and one JSON line. Nothing is asserted: the figures depend
on the machine and its load. A few minutes show a leak of megabytes per hour only roughly; run longer
(--minutes 60) to see a slow one.

Measured on the 2-core development machine. Default 6 minutes: RSS 85.6 MiB at start, 90.0 after warm-up,
94.1 at the end; fds 27 -> 29, threads 3 -> 5; CPU 7 % of one core; spool peak 33,000 points (10.6 MiB)
drained within 10 s of VictoriaMetrics' return; one power_outage incident opened and resolved; all 98,878
samples in VictoriaMetrics. The 6-minute slopes (24 MiB/h after warm-up, 8 over the last phase) are steps,
not trends: RSS rises by about 3 MiB in the outage's first minute (most likely SQLite's page cache as the
spool fills), then by under 1 MiB over the rest of the run, flat for the last 90 s. 30 minutes (a 10-minute
outage, 165,700 points and 53 MiB spooled): RSS 91.5 MiB after warm-up, 94.4-94.7 through and after the
outage, 95.3-95.5 for the last 9 minutes; fds 29, threads 6 (asyncio's default executor, bounded).
25 minutes: RSS 90.7 MiB after warm-up, peak 94.4, end 93.8; slope 2.2 MiB/h after warm-up, 0.6 over
the last phase; all 413,458 samples in VictoriaMetrics. The daemon in-process under tracemalloc for 17
minutes: no allocation site of meterwatch grew by more than 6 KiB between minute 2 and minute 17.

GC modes (issue 11; gateway/core/gctune.py): --gc tuned,default,off runs the whole soak once per
METERWATCH_GC value, one after the other, and prints a comparison (RSS start, after warm-up, end, drift;
CPU; gen-2 collections, the longest gen-2 pause and the time paused, from the daemon's exit line).
Measured at --buildings 30 (260 devices, 3 of 4 phases as above), load 6-12 on the 2 shared cores:
  5 min, tuned vs default: RSS 137.2 -> 195.8 MiB (+42.1 after warm-up) vs 137.1 -> 196.6 (+41.2);
    gen-2 collections 1 (the deliberate one at start-up, 437 ms) vs 8 (longest 391 ms); paused in all
    1.58 s vs 3.90 s; young collections 29 vs 1,381; every sample delivered in both.
  2.5 min, tuned / off / default: RSS drift after warm-up +20.8 / +23.6 / +18.9 MiB; gen-2 1 / 0 / 3
    (default's longest 1,314 ms at load 10); paused 1.43 / 0 / 5.02 s.
The RSS growth is the same whatever the collector does (even with it off), so it is live data of the first
minutes at 260 devices (windows and rings filling, as in the 100-device runs above), not garbage kept by the
tuning; a run of 30 minutes or more at this size is what would show where it levels off.

    .venv/bin/python bench/soak.py [--minutes 6] [--interval 10] [--buildings 10] [--gc tuned]
                                                                    (or `make soak`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/soak.py`
    sys.path.insert(0, str(ROOT))

from bench.waiting import wait_for  # noqa: E402
from simulators.ports import free_ports  # noqa: E402
from simulators.runner import SimulatorProcess, stop_process_group  # noqa: E402
from tests.fixtures.victoria import Victoria  # noqa: E402

SITE_ID = "soak"
BUILDINGS = 10
TCP_METERS = 8  # SDM630s per building's Modbus TCP gateway
RTU_LINES = 4  # RS-485 device servers, in the first buildings
CUT_BUILDING = "B02"
CUT_SECONDS = 30.0
CLEAR_FOR = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 2**20


# ----------------------------------------------------------------------------------------------- the site


def site_text(ports: list[int], http_port: int, influx_url: str, n_buildings: int = BUILDINGS) -> str:
    """The soak site: `ports` holds one port per TCP gateway, then one per RS-485 device server."""
    buildings, lines, devices = [], [], []
    for b in range(1, n_buildings + 1):
        bid = f"B{b:02d}"
        buildings.append(
            f"  - {{id: {bid}, households: 60, domains: [{{id: {bid}-power, kind: power}},"
            f" {{id: {bid}-water, kind: water}}]}}"
        )
        lines.append(
            f"  - {{id: {bid}-gw, transport: tcp, host: 127.0.0.1, port: {ports[b - 1]}, timeout: 500ms}}"
        )
        for u in range(1, TCP_METERS + 1):
            role = "role: main_power, households: 60" if u == 1 else "role: unit_power, households: 1"
            devices.append(
                f"  - {{id: {bid}-m{u}, building: {bid}, domain: {bid}-power, {role}, line: {bid}-gw,"
                f" unit: {u}, profile: sdm630, poll_interval: 1s}}"
            )
    for r in range(1, RTU_LINES + 1):
        bid = f"B{r:02d}"
        line = f"{bid}-rs485"
        lines.append(
            f"  - {{id: {line}, transport: rtu_over_tcp, host: 127.0.0.1, port: {ports[n_buildings + r - 1]},"
            f" baudrate: 19200, timeout: 500ms, powered_by: {bid}-power}}"
        )
        rtu = [
            ("pump", "dtsu666", "power", "role: pump"),
            ("shop1", "sdm120", "power", "role: unit_power, households: 1"),
            ("shop2", "sdm120", "power", "role: unit_power, households: 1"),
            ("p-low", "rs485-pressure", "water", "role: zone_pressure, households: 30"),
            ("p-high", "rs485-pressure", "water", "role: zone_pressure, households: 30"),
        ]
        for unit, (name, profile, kind, role) in enumerate(rtu, start=1):
            devices.append(
                f"  - {{id: {bid}-{name}, building: {bid}, domain: {bid}-{kind}, {role}, line: {line},"
                f" unit: {unit}, profile: {profile}, poll_interval: 1s}}"
            )
    return f"""site: {{id: {SITE_ID}, name: Soak bench, timezone: UTC}}
buildings:
{chr(10).join(buildings)}
lines:
{chr(10).join(lines)}
devices:
{chr(10).join(devices)}
influx: {{url: "{influx_url}", bucket: soak, batch_size: 1000, flush_interval: 1s, timeout: 5s}}
http: {{port: {http_port}}}
rules:
  # the shipped power.outage, resolving sooner so that the incident closes within a short soak
  - {{id: power.outage, kind: polyphase, check: outage, category: power_outage, severity: critical,
     audiences: [staff, residents], match: {{roles: [main_power, unit_power]}}, for: 5s,
     clear_for: {CLEAR_FOR:g}s}}
"""


@dataclass(frozen=True)
class Plan:
    """When each phase starts, in seconds from the simulators' start."""

    total: float

    @property
    def warmup_end(self) -> float:
        return self.total / 6

    @property
    def vm_down(self) -> float:
        return self.total / 6

    @property
    def vm_up(self) -> float:
        return self.total / 2

    @property
    def cut(self) -> float:
        return 0.6 * self.total

    @property
    def restore(self) -> float:
        return self.cut + CUT_SECONDS

    def phase(self, t: float) -> str:
        if t < self.vm_down:
            return "normal"
        if t < self.vm_up:
            return "vm-down"
        if self.cut <= t < self.restore:
            return "power-cut"
        return "vm-up"


def scenario_text(plan: Plan) -> str:
    return f"""name: soak
description: {CUT_BUILDING} mains power cut at {plan.cut:g}s for {CUT_SECONDS:g}s (written by bench/soak.py).
timeline:
  - {{at: {plan.cut:g}s, cut_power: {CUT_BUILDING}}}
  - {{at: {plan.restore:g}s, restore_power: {CUT_BUILDING}}}
"""


# -------------------------------------------------------------------------------------- what is sampled


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(rest.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


class Scrape:
    """One /metrics text: sample name -> [(labels, value)]."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                self.samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))

    def total(self, name: str, **labels: str) -> float:
        return sum(
            v for lab, v in self.samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
        )

    def by(self, name: str, label: str) -> dict[str, float]:
        return {lab.get(label, ""): v for lab, v in self.samples.get(name, [])}


@dataclass
class Reading:
    t: float  # seconds since the simulators started
    phase: str
    rss_mib: float
    fds: int
    threads: int
    cpu_percent: float
    spool_points: int
    spool_bytes: int
    bus_queues: dict[str, int]
    bus_published: int
    samples_published: int  # sum of meterwatch_device_samples
    points_written: int
    devices_up: int
    incidents_open: int


@dataclass
class Gateway:
    """`meterwatch run` in a child process; its /proc entries and HTTP endpoints."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _cpu: tuple[float, float] = field(default=(0.0, 0.0))  # (monotonic, cpu seconds) at the last reading

    @classmethod
    def start(cls, site: Path, state_dir: Path, http_port: int, log_path: Path, gc_mode: str) -> Gateway:
        cmd = [sys.executable, "-m", "gateway.cli", "run", str(site), "--state-dir", str(state_dir)]
        cmd += ["--log-level", "info"]  # info: the daemon's last line holds its GC pauses (gctune.summary)
        env = dict(os.environ, METERWATCH_GC=gc_mode)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True, env=env
            )
        gw = cls(proc, f"http://127.0.0.1:{http_port}", log_path)
        wait_for(gw.ready, 60, "the gateway's /readyz", interval=0.2, alive=gw.alive)
        gw._cpu = (time.monotonic(), proc_cpu_seconds(proc.pid))
        return gw

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        try:
            http_get(self.url + "/readyz", timeout=2)
            return True
        except (urllib.error.URLError, OSError):
            return False

    def scrape(self) -> Scrape:
        return Scrape(http_get(self.url + "/metrics").decode())

    def read(self, t: float, phase: str) -> tuple[Reading, Scrape]:
        pid = self.proc.pid
        status = proc_status(pid)
        now, cpu = time.monotonic(), proc_cpu_seconds(pid)
        cpu_percent = 100 * (cpu - self._cpu[1]) / max(1e-9, now - self._cpu[0])
        self._cpu = (now, cpu)
        m = self.scrape()
        return (
            Reading(
                t=round(t, 1),
                phase=phase,
                rss_mib=round(status["VmRSS"] / 1024, 2),
                fds=open_fds(pid),
                threads=status["Threads"],
                cpu_percent=round(cpu_percent, 1),
                spool_points=int(m.total("meterwatch_spool_points")),
                spool_bytes=int(m.total("meterwatch_spool_bytes")),
                bus_queues={k: int(v) for k, v in m.by("meterwatch_bus_queue_events", "subscriber").items()},
                bus_published=int(m.total("meterwatch_bus_published_total")),
                samples_published=int(m.total("meterwatch_device_samples_total")),
                points_written=int(m.total("meterwatch_sink_points_written_total")),
                devices_up=int(m.total("meterwatch_device_up")),
                incidents_open=len(self.incidents("open")),
            ),
            m,
        )

    def incidents(self, state: str) -> list[dict[str, Any]]:
        body = json.loads(http_get(f"{self.url}/api/incidents?state={state}&limit=1000"))
        found: list[dict[str, Any]] = body["incidents"]
        return found

    def stop(self, timeout: float = 30.0) -> int:
        return stop_process_group(self.proc, timeout)


# ------------------------------------------------------------------------------------------------ figures


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (y - my) for t, y in points)
    return 3600 * sxy / sxx


def human(r: Reading) -> str:
    queues = " ".join(f"{k}={v}" for k, v in sorted(r.bus_queues.items()))
    return (
        f"t={r.t:6.1f}s {r.phase:9s} rss {r.rss_mib:6.1f} MiB fds {r.fds:3d} threads {r.threads:2d} "
        f"cpu {r.cpu_percent:5.1f}% spool {r.spool_points:6d} pts {r.spool_bytes / MIB:5.2f} MiB "
        f"queues [{queues}] published {r.samples_published} written {r.points_written} "
        f"up {r.devices_up} incidents {r.incidents_open}"
    )


# ------------------------------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    plan = Plan(total=60.0 * args.minutes)
    ports = free_ports(args.buildings + RTU_LINES + 1)
    http_port = ports.pop()
    vm = Victoria(work / "victoria-data")
    vm.start()
    site = work / "site.yaml"
    site.write_text(site_text(ports, http_port, vm.url, args.buildings), encoding="utf-8")
    scenario = work / "soak-scenario.yaml"
    scenario.write_text(scenario_text(plan), encoding="utf-8")
    readings: list[Reading] = []
    sim: SimulatorProcess | None = None
    gw: Gateway | None = None
    try:
        sim = SimulatorProcess.spawn(site, scenario, args=("--no-mqtt", "--log-level", "error"), timeout=60)
        t0 = time.monotonic()
        gw = Gateway.start(site, work / "state", http_port, work / "gateway.log", args.gc)
        print(
            f"soak: {args.minutes:g} min, {devices(args.buildings)} devices at 1 s, METERWATCH_GC={args.gc}, "
            f"gateway pid {gw.proc.pid}",
            flush=True,
        )
        events: list[tuple[float, str, Callable[[], None]]] = [
            (plan.vm_down, "VictoriaMetrics stopped", vm.stop),
            (plan.vm_up, "VictoriaMetrics started", vm.start),
        ]
        next_reading = 0.0
        while True:
            t = time.monotonic() - t0
            while events and events[0][0] <= t:
                _, what, action = events.pop(0)
                action()
                print(f"t={t:6.1f}s {what}", flush=True)
            if t >= next_reading:
                if not gw.alive():
                    raise RuntimeError(f"the gateway exited with {gw.proc.returncode}; see {gw.log_path}")
                reading, _ = gw.read(t, plan.phase(t))
                readings.append(reading)
                print(human(reading), flush=True)
                next_reading += args.interval
            if t >= plan.total:
                break
            wake = min([next_reading, plan.total, *(e[0] for e in events)])
            time.sleep(max(0.05, wake - (time.monotonic() - t0)))
        result = finish(plan, readings, sim, gw, vm)
        result["devices"] = devices(args.buildings)
        result["gc_mode"] = args.gc
        return result
    finally:
        if sim is not None:
            sim.stop()
        if gw is not None:
            gw.stop()
        vm.stop()


def finish(
    plan: Plan, readings: list[Reading], sim: SimulatorProcess, gw: Gateway, vm: Victoria
) -> dict[str, Any]:
    """Stop the sources, let the spool drain, and count what VictoriaMetrics holds."""
    incidents = gw.incidents("all")
    sim.stop()

    # The sink holds what it took from the bus for up to influx.flush_interval before it reaches the spool,
    # so an empty queue and spool is not enough: wait until every sample it took is written and the
    # counters stand still (the devices are silent now).
    last, before = gw.scrape(), None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        counters = tuple(
            int(last.total(name))
            for name in (
                "meterwatch_device_samples_total",
                "meterwatch_sink_samples_received_total",
                "meterwatch_sink_points_written_total",
                "meterwatch_spool_points",
            )
        )
        if counters == before and counters[3] == 0 and counters[2] >= counters[1]:
            break
        before = counters
        time.sleep(1.0)
        last = gw.scrape()
    published = int(last.total("meterwatch_device_samples_total"))
    received = int(last.total("meterwatch_sink_samples_received_total"))
    written = int(last.total("meterwatch_sink_points_written_total"))
    dead = int(last.total("meterwatch_sink_dead_letter_points_total"))
    dropped = int(last.total("meterwatch_spool_dropped_points_total"))
    code = gw.stop()
    stored = vm.count(f'{{__name__=~".+_quality",site="{SITE_ID}"}}')
    log_text = gw.log_path.read_text(errors="replace")
    errors = sum(1 for line in log_text.splitlines() if " error " in line.lower() or "level=error" in line)
    gc_pauses = gc_summary(log_text)
    return summarise(
        plan,
        readings,
        incidents,
        {
            "samples_published": published,
            "sink_samples_received": received,
            "points_written": written,
            "points_stored": stored,
            "dead_letter_points": dead,
            "spool_dropped_points": dropped,
            "delivered": stored >= published and received == published and dead == 0 and dropped == 0,
        },
        {"exit_code": code, "log_error_lines": errors, **gc_pauses},
    )


def summarise(
    plan: Plan,
    readings: list[Reading],
    incidents: list[dict[str, Any]],
    delivery: dict[str, Any],
    gateway: dict[str, Any],
) -> dict[str, Any]:
    after_warmup = [r for r in readings if r.t >= plan.warmup_end]
    last_phase = [r for r in readings if r.t >= plan.vm_up]
    first, warm, end = readings[0], (after_warmup or readings)[0], readings[-1]
    outages = [i for i in incidents if i["category"] == "power_outage"]
    return {
        "bench": "soak",
        "minutes": plan.total / 60,
        "devices": BUILDINGS * TCP_METERS + RTU_LINES * 5,
        "rss_mib_start": first.rss_mib,
        "rss_mib_after_warmup": warm.rss_mib,
        "rss_mib_end": end.rss_mib,
        "rss_mib_peak": max(r.rss_mib for r in readings),
        "rss_slope_mib_per_h_after_warmup": _round(slope_per_hour([(r.t, r.rss_mib) for r in after_warmup])),
        "rss_slope_mib_per_h_last_phase": _round(slope_per_hour([(r.t, r.rss_mib) for r in last_phase])),
        "fds_start": first.fds,
        "fds_end": end.fds,
        "fds_max": max(r.fds for r in readings),
        "threads_start": first.threads,
        "threads_end": end.threads,
        "threads_max": max(r.threads for r in readings),
        "cpu_percent_mean": round(sum(r.cpu_percent for r in readings[1:]) / max(1, len(readings) - 1), 1),
        "spool_points_peak": max(r.spool_points for r in readings),
        "spool_bytes_peak": max(r.spool_bytes for r in readings),
        "spool_points_end": end.spool_points,
        "incidents": [
            {k: i[k] for k in ("id", "category", "scope", "state", "opened_at", "resolved_at")}
            for i in incidents
        ],
        "power_outage_opened": len(outages),
        "power_outage_resolved": sum(1 for i in outages if i["resolved_at"]),
        **delivery,
        "gateway": gateway,
        "readings": [asdict(r) for r in readings],
    }


def devices(n_buildings: int) -> int:
    return n_buildings * TCP_METERS + RTU_LINES * 5


def gc_summary(log_text: str) -> dict[str, float]:
    """The GC counters of the daemon's exit line ("garbage collector pauses", gateway/core/gctune.py)."""
    import re

    line = next((ln for ln in reversed(log_text.splitlines()) if "garbage collector pauses" in ln), "")
    return {k: float(v) for k, v in re.findall(r"(gc_[a-z0-9_]+)=([0-9.]+)", line)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def report(r: dict[str, Any]) -> None:
    print(
        f"RSS: start {r['rss_mib_start']:.1f} MiB, after warm-up {r['rss_mib_after_warmup']:.1f} MiB, "
        f"end {r['rss_mib_end']:.1f} MiB, peak {r['rss_mib_peak']:.1f} MiB; slope after warm-up "
        f"{r['rss_slope_mib_per_h_after_warmup']} MiB/h, over the last phase "
        f"{r['rss_slope_mib_per_h_last_phase']} MiB/h"
    )
    print(
        f"fds: start {r['fds_start']}, end {r['fds_end']}, max {r['fds_max']}; threads: start "
        f"{r['threads_start']}, end {r['threads_end']}, max {r['threads_max']}; "
        f"mean CPU {r['cpu_percent_mean']}%"
    )
    print(
        f"spool: peak {r['spool_points_peak']} points ({r['spool_bytes_peak'] / MIB:.2f} MiB), "
        f"{r['spool_points_end']} at the end of the run"
    )
    print(
        f"incidents: {len(r['incidents'])} in all; power_outage opened {r['power_outage_opened']}, "
        f"resolved {r['power_outage_resolved']}"
    )
    g = r["gateway"]
    print(
        f"GC ({r.get('gc_mode')}): {g.get('gc_collections_gen2', '?')} gen-2 collections, "
        f"longest gen-2 pause "
        f"{g.get('gc_gen2_longest_pause_ms', '?')} ms, longest pause {g.get('gc_longest_pause_ms', '?')} ms, "
        f"{g.get('gc_pause_seconds_total', '?')} s paused in all, "
        f"{g.get('gc_collections_gen0', '?')} young collections"
    )
    print(
        f"delivered: {'yes' if r['delivered'] else 'NO'}: {r['samples_published']} samples published, "
        f"{r['sink_samples_received']} taken by the sink, {r['points_written']} points written, "
        f"{r['points_stored']} stored in VictoriaMetrics, {r['dead_letter_points']} dead letters, "
        f"{r['spool_dropped_points']} dropped; gateway exit {r['gateway']['exit_code']}, "
        f"{r['gateway']['log_error_lines']} error lines in its log"
    )
    print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="length of the run (phases scale with it)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (site, logs, spool)")
    ap.add_argument(
        "--buildings", type=int, default=BUILDINGS, help=f"buildings of {TCP_METERS} TCP meters each"
    )
    ap.add_argument(
        "--gc",
        default="tuned",
        help="METERWATCH_GC of the gateway; several, comma-separated (tuned,off), run one after the other",
    )
    args = ap.parse_args()
    if args.minutes * 60 < 10 * args.interval:
        ap.error("--minutes must allow at least 10 readings")
    modes = [m.strip() for m in args.gc.split(",") if m.strip()]
    from gateway.core.gctune import settings_from_env

    for mode in modes:
        try:
            settings_from_env({"METERWATCH_GC": mode})
        except ValueError as exc:
            ap.error(str(exc))
    results = []
    for mode in modes:
        args.gc = mode
        work = Path(tempfile.mkdtemp(prefix=f"meterwatch-soak-{mode.replace(',', '-')}-"))
        try:
            result = run(args, work)
            report(result)
            results.append(result)
        finally:
            if args.keep:
                print(f"work folder kept: {work}")
            else:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
    if len(results) > 1:
        compare(results)


def compare(results: list[dict[str, Any]]) -> None:
    """One line per GC mode side by side, and one JSON line with the comparison."""
    rows = []
    for r in results:
        g = r["gateway"]
        row = {
            "gc_mode": r["gc_mode"],
            "devices": r["devices"],
            "minutes": r["minutes"],
            "rss_mib_start": r["rss_mib_start"],
            "rss_mib_after_warmup": r["rss_mib_after_warmup"],
            "rss_mib_end": r["rss_mib_end"],
            "rss_mib_peak": r["rss_mib_peak"],
            "rss_drift_mib_after_warmup": round(r["rss_mib_end"] - r["rss_mib_after_warmup"], 2),
            "rss_slope_mib_per_h_after_warmup": r["rss_slope_mib_per_h_after_warmup"],
            "cpu_percent_mean": r["cpu_percent_mean"],
            "samples_published": r["samples_published"],
            "delivered": r["delivered"],
            **{k: v for k, v in g.items() if k.startswith("gc_")},
        }
        rows.append(row)
        print(
            f"compare {row['gc_mode']:8s}: RSS {row['rss_mib_start']:.1f} -> {row['rss_mib_end']:.1f} MiB "
            f"(drift after warm-up {row['rss_drift_mib_after_warmup']:+.1f} MiB, "
            f"peak {row['rss_mib_peak']:.1f}), "
            f"CPU {row['cpu_percent_mean']}%, gen-2 {row.get('gc_collections_gen2', '?')} "
            f"(longest {row.get('gc_gen2_longest_pause_ms', '?')} ms), paused "
            f"{row.get('gc_pause_seconds_total', '?')} s, delivered {row['delivered']}"
        )
    print(json.dumps({"bench": "soak_gc", "runs": rows}))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
