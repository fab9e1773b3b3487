"""Polling: Modbus TCP requests per CPU-second of the gateway beside three baselines, and its capacity.

The server: every meter is its own Modbus TCP endpoint (unit 1) of the C meter server (bench/cmeter: one
libmodbus process, epoll), so the server is never the limit (the Python simulator tops out near 3-10k
requests/s here). The server counts the requests it answers; every figure below is requests (or values)
the server answered in a window divided by the client process's CPU-seconds in the same window
(/proc/<pid>/stat, all threads), with its RSS at the end of the window.

1. Side by side at --meters N (default 800), SDM630 at 1 s:
   - gateway: a fresh process running the daemon's components as `meterwatch run` would (every builder:
     Modbus line actors, bus, store, metrics, HTTP), the profile's 3 planned reads and 30 values per meter;
   - raw asyncio: the same 3 reads per meter per second, one connection per meter, MBAP + FC04 packed with
     one `struct.Struct`, `readexactly`, each answer unpacked as float32 with one precompiled Struct; no
     timeout, no bus, no bookkeeping (the limit of Python here);
   - bare pymodbus: AsyncModbusTcpClient, one per meter, the same reads, nothing done with the words;
   - ThingsBoard IoT Gateway 3.8.5 (PyPI, its own venv; bench/tb_gateway.py): the same meters, 9 float32
     values each, one request per value as it does, publishing to a local mosquitto. Its requests carry one
     value each, so the fair figure beside it is values per CPU-second (decoded points), not requests.
2. The server's own limit: the raw loop without a period (every connection reads back to back) for a few
   seconds; requests/s served and per server CPU-second.
3. Capacity: the gateway at --steps (1000, 1600, 2400, ...) until the first overrun (a skipped cycle, a
   failed request or a device down in the window) or until --budget seconds are spent; the step at
   --rss-devices (1000) and a raw asyncio loop at the same N give the RSS row.

Prints one human line per measurement, a summary and one JSON line with every figure. Figures depend on the
machine and its load (other processes share the cores); nothing is asserted.

    .venv/bin/python bench/poll.py [--meters 800] [--steps 1000,1600,2400] [--budget 120] [--no-tb]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/poll.py`
    sys.path.insert(0, str(ROOT))

DEFAULT_STEPS = (1000, 1600, 2400, 3200, 4000)
SETTLE_MAX = (
    20.0  # seconds the gateway worker waits past its warm-up for every device up and no skipped cycle
)
SDM630_VALUES, SDM630_READS = 30, 3  # the profile's polled points and its planned reads (one cycle)


# ----------------------------------------------------------------------------------------------- site files


def site_text(ports: list[int], poll_interval: float, timeout: float, pipeline: int = 1) -> str:
    """A site with one SDM630 per Modbus TCP endpoint; HTTP on a free port; no storage. Fields at their
    default (1 s, pipeline 1) are left out, to keep the generated file small."""
    line_extra = f", timeout: {timeout}" if timeout != 1.0 else ""
    line_extra += f", pipeline: {pipeline}" if pipeline != 1 else ""
    device_extra = f", poll_interval: {poll_interval}" if poll_interval != 1.0 else ""
    lines = "\n".join(
        f"  - {{id: m{i}, transport: tcp, host: 127.0.0.1, port: {p}{line_extra}}}"
        for i, p in enumerate(ports)
    )
    devices = "\n".join(
        f"  - {{id: meter{i}, building: B1, domain: B1-power, line: m{i}, unit: 1, profile: sdm630"
        f"{device_extra}}}"
        for i in range(len(ports))
    )
    return f"""site: {{id: bench, name: Polling bench}}
buildings:
  - id: B1
    domains: [{{id: B1-power, kind: power}}]
lines:
{lines}
devices:
{devices}
http: {{port: 0}}
"""


# ------------------------------------------------------------------------------------- process measurements


def proc_cpu_seconds(pid: int) -> float:
    """CPU-seconds of every live thread of `pid`, in nanoseconds from schedstat: the tick-based
    utime + stime of /proc/<pid>/stat moves in 10 ms steps, too coarse for a raw loop's second of work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class Report:
    """What a worker saw of itself in its window (the orchestrator measures CPU and requests)."""

    devices: int
    rss_mib: float
    peak_rss_mib: float
    cycles: int = 0
    skipped_cycles: int = 0
    errors: int = 0
    down: int = 0
    late_cycles: int = 0  # raw loops: a cycle that started more than one interval late
    settle_s: float = 0.0  # gateway: seconds past the warm-up until every device was up and none skipped


@dataclass
class Measure:
    """One client over one window: the server's counts against the client's CPU."""

    kind: str
    devices: int
    seconds: float
    cpu_percent: float
    rss_mib: float
    requests_per_s: float
    requests_per_cpu_s: float | None
    values_per_s: float
    values_per_cpu_s: float | None
    server_cpu_percent: float
    cycles: int = 0
    skipped_cycles: int = 0
    errors: int = 0
    down: int = 0
    late_cycles: int = 0
    readings_per_meter_s: float | None = None  # 1.0 = every meter read fully once a second
    published_messages: int | None = None  # ThingsBoard: telemetry messages it sent in the window
    settle_s: float | None = None  # gateway: seconds past the warm-up before its window (every device up)

    @property
    def overrun(self) -> bool:
        """The 1 s period not held: by the client's own count, or seen from the server (ThingsBoard says
        nothing when it falls behind: fewer of its meters' values a second than it was asked for)."""
        rate = self.readings_per_meter_s
        behind = self.kind == "thingsboard" and rate is not None and rate < 0.95
        return self.skipped_cycles > 0 or self.errors > 0 or self.down > 0 or behind


# ------------------------------------------------------------------------------------------------ workers


def load_bench_site(path: Path) -> Any:
    """The generated site; the loader's guard against huge hand-written files (50,000 YAML values, about
    2,200 meters written out one by one) is lifted for it, in this worker process only."""
    from gateway.config import load_site, yamlsrc

    yamlsrc.MAX_VALUES = 10_000_000
    return load_site(path)


def mark(edge: str) -> None:
    """Tell the orchestrator the window starts or ends (it reads CPU and the server's counters then)."""
    print(f"WINDOW {edge}", flush=True)


def emit(report: Report) -> None:
    """The worker's figures, before it tears down (the orchestrator ends a teardown that hangs)."""
    print("RESULT " + json.dumps(asdict(report)), flush=True)


async def gateway_worker(site_path: Path, warmup: float, window: float) -> None:
    """The daemon's components on `site_path`; its own counters over [warmup, warmup + window]."""
    from gateway.app.daemon import build_runtime, serve
    from gateway.core import gctune
    from gateway.core.stats import DeviceStats

    site = load_bench_site(site_path)
    with tempfile.TemporaryDirectory(prefix="meterwatch-bench-") as tmp:
        # the collector as `meterwatch run` sets it once started (METERWATCH_GC, default tuned)
        rt = build_runtime(site, state_dir=Path(tmp), tune_gc=gctune.settings_from_env())
        stats: dict[str, DeviceStats] = rt.services.device_stats()
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(rt, stop))

        def totals() -> tuple[int, int, int]:
            s = stats.values()
            return (
                sum(d.cycles for d in s),
                sum(d.skipped_cycles for d in s),
                sum(sum(d.errors.values()) for d in s),
            )

        await asyncio.sleep(warmup)
        # At thousands of meters the start (every connection opened, the first cycles) outlasts the warm-up:
        # the window starts once every device is up and a second has passed without a skipped cycle.
        settling = time.monotonic()
        last = totals()
        while time.monotonic() - settling < SETTLE_MAX:
            await asyncio.sleep(1.0)
            now = totals()
            if now[1] == last[1] and all(d.up for d in stats.values()):
                break
            last = now
        settled = time.monotonic() - settling
        mark("start")
        before = totals()
        await asyncio.sleep(window)
        after = totals()
        mark("end")
        rss, peak = rss_mib()
        down = sum(1 for d in stats.values() if not d.up)
        cyc, skip, err = (a - b for a, b in zip(after, before, strict=True))
        emit(Report(len(stats), rss, peak, cyc, skip, err, down, settle_s=round(settled, 1)))
        stop.set()
        await serving


def planned_reads(site_path: Path) -> list[tuple[int, int, list[tuple[int, int]], float]]:
    """(port, unit, [(address, count)], interval) per meter: what the gateway's planner reads."""
    from gateway.app.modbus import modbus_specs

    site = load_bench_site(site_path)
    return [
        (line.port or 502, dev.unit, [(r.address, r.count) for r in dev.requests], dev.poll_interval)
        for line, devices in modbus_specs(site)
        for dev in devices[:1]
    ]


class Counts:
    def __init__(self) -> None:
        self.cycles = self.errors = self.late = 0
        self.measuring = False


async def raw_meter(
    port: int,
    unit: int,
    reads: list[tuple[int, int]],
    interval: float,
    counts: Counts,
    flood: bool,
    pipelined: bool = False,
) -> None:
    """One meter, one connection: MBAP + FC04 by struct, readexactly, float32 unpack; no timeout. Pipelined:
    the cycle's requests in one write, then their answers in order."""
    request = struct.Struct(">HHHBBHH")  # MBAP (tid, protocol, length, unit) + FC, address, count
    head = struct.Struct(">HHHBBB")  # MBAP + FC + byte count (or exception code)
    decoders = {count: struct.Struct(f">{count // 2}f") for _, count in reads}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tid = 0
    due = time.monotonic()
    try:
        while True:
            if not flood:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval and counts.measuring:
                    counts.late += 1
            if pipelined:
                tids = []
                frames = []
                for address, count in reads:
                    tid = (tid + 1) & 0xFFFF
                    tids.append(tid)
                    frames.append(request.pack(tid, 0, 6, unit, 4, address, count))
                writer.write(b"".join(frames))
                for want, (_, count) in zip(tids, reads, strict=True):
                    got, _, _, _, fc, n = head.unpack(await reader.readexactly(9))
                    if fc & 0x80 or got != want:
                        counts.errors += counts.measuring
                        continue
                    decoders[count].unpack(await reader.readexactly(n))
                counts.cycles += counts.measuring
                due += interval
                continue
            for address, count in reads:
                tid = (tid + 1) & 0xFFFF
                writer.write(request.pack(tid, 0, 6, unit, 4, address, count))
                got, _, _, _, fc, n = head.unpack(await reader.readexactly(9))
                if fc & 0x80 or got != tid:
                    counts.errors += counts.measuring
                    continue
                decoders[count].unpack(await reader.readexactly(n))
            counts.cycles += counts.measuring
            due += interval
    finally:
        writer.close()


async def raw_worker(
    site_path: Path, warmup: float, window: float, flood: bool = False, pipelined: bool = False
) -> None:
    meters = planned_reads(site_path)
    counts = Counts()
    tasks = [asyncio.create_task(raw_meter(*m, counts, flood, pipelined)) for m in meters]
    await asyncio.sleep(warmup)
    mark("start")
    counts.measuring = True
    await asyncio.sleep(window)
    counts.measuring = False
    mark("end")
    rss, peak = rss_mib()
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    emit(Report(len(meters), rss, peak, counts.cycles, 0, counts.errors, len(failed), counts.late))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def pymodbus_worker(site_path: Path, warmup: float, window: float) -> None:
    """The same planned reads with bare pymodbus clients, one task per meter, nothing done with the words."""
    from pymodbus.client import AsyncModbusTcpClient

    meters = planned_reads(site_path)
    counts = Counts()

    async def meter(port: int, unit: int, reads: list[tuple[int, int]], interval: float) -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        await client.connect()
        due = time.monotonic()
        try:
            while True:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval and counts.measuring:
                    counts.late += 1
                for address, count in reads:
                    try:
                        rr = await client.read_input_registers(address, count=count, device_id=unit)
                        failed = rr.isError()
                    except Exception:
                        failed = True
                    counts.errors += failed and counts.measuring
                counts.cycles += counts.measuring
                due += interval
        finally:
            client.close()

    tasks = [asyncio.create_task(meter(*m)) for m in meters]
    await asyncio.sleep(warmup)
    mark("start")
    counts.measuring = True
    await asyncio.sleep(window)
    counts.measuring = False
    mark("end")
    rss, peak = rss_mib()
    emit(Report(len(meters), rss, peak, counts.cycles, 0, counts.errors, 0, counts.late))
    for t in tasks:  # at 800 clients pymodbus has been seen spinning for minutes here: the caller ends it
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


WORKER_KINDS = ("gateway", "raw_asyncio", "raw_pipelined", "pymodbus", "raw_flood")
PIPELINE = 3  # the pipelined runs: a line's `pipeline`, so an SDM630's three reads go out in one write
DEFAULT_PIPELINED_STEPS = (2400, 3200, 4000, 5000, 6000)


def worker_main(kind: str, site_path: Path, warmup: float, window: float) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # the daemon's info lines would be noise here
    if kind == "gateway":
        asyncio.run(gateway_worker(site_path, warmup, window))
    elif kind == "pymodbus":
        asyncio.run(pymodbus_worker(site_path, warmup, window))
    else:
        asyncio.run(
            raw_worker(
                site_path, warmup, window, flood=kind == "raw_flood", pipelined=kind == "raw_pipelined"
            )
        )


# ------------------------------------------------------------------------------------------- orchestrator


class Server:
    """What the orchestrator needs of the meter server: its pid and its request counters."""

    def __init__(self, cmeter: Any) -> None:
        self.cmeter = cmeter

    def snapshot(self) -> tuple[float, int]:
        """(server CPU-seconds, requests answered)."""
        return proc_cpu_seconds(self.cmeter.pid), self.cmeter.stats()[0]


def measure_between(
    kind: str,
    pid: int,
    server: Server,
    start: tuple[float, float, tuple[float, int]],
    end: tuple[float, float, tuple[float, int]],
    report: Report,
    values_per_request: float,
) -> Measure:
    (t0, c0, (s0, r0)), (t1, c1, (s1, r1)) = start, end
    seconds, cpu = t1 - t0, c1 - c0
    requests = r1 - r0
    values = requests * values_per_request
    return Measure(
        kind=kind,
        devices=report.devices,
        seconds=round(seconds, 2),
        cpu_percent=round(100 * cpu / seconds, 1),
        rss_mib=round(report.rss_mib, 1),
        requests_per_s=round(requests / seconds, 1),
        requests_per_cpu_s=round(requests / cpu) if cpu > 0 else None,
        values_per_s=round(values / seconds, 1),
        values_per_cpu_s=round(values / cpu) if cpu > 0 else None,
        server_cpu_percent=round(100 * (s1 - s0) / seconds, 1),
        cycles=report.cycles,
        skipped_cycles=report.skipped_cycles,
        errors=report.errors,
        down=report.down,
        late_cycles=report.late_cycles,
        settle_s=report.settle_s if kind.startswith("gateway") else None,
        readings_per_meter_s=round(report.cycles / report.devices / seconds, 3) if report.devices else None,
    )


def run_worker(
    kind: str, site_path: Path, warmup: float, window: float, server: Server, label: str | None = None
) -> Measure:
    """Run one worker process; the server's answers and the worker's CPU over its window (`label`: the
    measure's kind when it is not the worker's, e.g. the gateway on pipelined lines)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--site", str(site_path)]
    cmd += ["--warmup", str(warmup), "--window", str(window)]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT)
        assert proc.stdout is not None
        report: Report | None = None
        start = end = (0.0, 0.0, (0.0, 0))
        for line in proc.stdout:
            if line.startswith("WINDOW "):
                edge = (time.monotonic(), proc_cpu_seconds(proc.pid), server.snapshot())
                if line.startswith("WINDOW start"):
                    start = edge
                else:
                    end = edge
            elif line.startswith("RESULT "):
                report = Report(**json.loads(line[len("RESULT ") :]))
                break
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # its teardown hangs: the figures are in already
            proc.kill()
            code = proc.wait(10)
        if report is None:
            errors.seek(0)
            raise RuntimeError(f"{kind} worker failed (exit {code}):\n{errors.read()[-3000:]}")
    return measure_between(label or kind, proc.pid, server, start, end, report, SDM630_VALUES / SDM630_READS)


def run_thingsboard(ports: list[int], warmup: float, window: float, server: Server) -> Measure:
    """ThingsBoard IoT Gateway polling `ports`, measured from outside over one window after `warmup`."""
    from bench.tb_gateway import VALUES_PER_METER, TBGateway

    with tempfile.TemporaryDirectory(prefix="tb-gateway-") as tmp, TBGateway(ports, Path(tmp)) as tb:
        # it connects its meters one after the other and ramps up over tens of seconds: measure once the
        # rate it asks for holds (two 3 s spans within 5 %), or the full rate is reached, or 90 s passed
        time.sleep(warmup)
        began, last = time.monotonic(), None
        while time.monotonic() - began < 90 - warmup:
            r0 = server.snapshot()[1]
            time.sleep(3.0)
            rate = (server.snapshot()[1] - r0) / 3.0
            if rate >= 0.97 * VALUES_PER_METER * len(ports) or (last and abs(rate - last) <= 0.05 * last):
                break
            last = rate
        assert tb.platform is not None
        sent0 = tb.platform.telemetry_messages
        start = (time.monotonic(), proc_cpu_seconds(tb.pid), server.snapshot())
        time.sleep(window)
        end = (time.monotonic(), proc_cpu_seconds(tb.pid), server.snapshot())
        sent = tb.platform.telemetry_messages - sent0
        rss, peak = rss_mib(tb.pid)
        if tb.proc is not None and tb.proc.poll() is not None:
            raise RuntimeError(f"ThingsBoard gateway exited with {tb.proc.returncode}: {tb.output()}")
    m = measure_between(
        "thingsboard", tb.pid, server, start, end, Report(len(ports), rss, peak), 1.0
    )  # one value per request
    m.published_messages = sent
    m.readings_per_meter_s = round(m.values_per_s / (VALUES_PER_METER * len(ports)), 3)
    return m


def human(m: Measure) -> str:
    rpc = f"{m.requests_per_cpu_s:,.0f}" if m.requests_per_cpu_s else "n/a"
    vpc = f"{m.values_per_cpu_s:,.0f}" if m.values_per_cpu_s else "n/a"
    return (
        f"{m.kind:17s} N={m.devices:4d}: {m.requests_per_s:8.0f} req/s at cpu {m.cpu_percent:5.1f}% = {rpc} "
        f"req/CPU-s, {vpc} values/CPU-s; rss {m.rss_mib:6.1f} MiB; skipped {m.skipped_cycles}, errors "
        f"{m.errors}, down {m.down}, late {m.late_cycles}, readings/meter/s {m.readings_per_meter_s}; "
        + (f"settled {m.settle_s} s after the warm-up; " if m.settle_s is not None else "")
        + f"server cpu {m.server_cpu_percent:5.1f}%"
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=800, help="meters of the side-by-side comparison")
    ap.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="capacity steps, ascending")
    ap.add_argument("--rss-devices", type=int, default=1000, help="N of the RSS row (gateway and raw loop)")
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    ap.add_argument("--window", type=float, default=8.0, help="seconds measured per run")
    ap.add_argument("--budget", type=float, default=120.0, help="start no capacity step after this many s")
    ap.add_argument(
        "--pipelined-steps",
        default=",".join(map(str, DEFAULT_PIPELINED_STEPS)),
        help=f"capacity steps with the lines' pipeline at {PIPELINE}, ascending",
    )
    ap.add_argument("--timeout", type=float, default=1.0, help="per-request timeout of the gateway's lines")
    ap.add_argument("--no-tb", action="store_true", help="skip ThingsBoard IoT Gateway")
    ap.add_argument(
        "--tb-warmup",
        type=float,
        default=20.0,
        help="seconds ThingsBoard runs before its window (it starts slowly)",
    )
    ap.add_argument("--no-capacity", action="store_true", help="skip the capacity search")
    ap.add_argument("--worker", choices=WORKER_KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--site", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker, args.site, args.warmup, args.window)
        return
    result = run(args)
    print(json.dumps(result))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.cmeter import DESCRIPTION, CMeterServer

    began = time.monotonic()
    steps = [] if args.no_capacity else sorted({int(s) for s in args.steps.split(",")})
    pipelined_steps = [] if args.no_capacity else sorted({int(s) for s in args.pipelined_steps.split(",")})
    total = max([args.meters, args.rss_devices, *steps, *pipelined_steps])
    out: dict[str, Any] = {"bench": "poll", "server": DESCRIPTION, "meters": args.meters}
    with tempfile.TemporaryDirectory(prefix="meterwatch-bench-") as tmp, CMeterServer(total) as cmeter:
        server = Server(cmeter)

        def site(n: int, pipeline: int = 1) -> Path:
            path = Path(tmp) / f"site{n}-p{pipeline}.yaml"
            if not path.exists():
                path.write_text(site_text(cmeter.ports[:n], 1.0, args.timeout, pipeline), encoding="utf-8")
            return path

        def attempt(name: str, fn: Any) -> dict[str, Any]:
            try:
                m: Measure = fn()
            except Exception as exc:  # one peer failing must not lose the others' figures
                print(f"{name:12s}: FAILED: {exc}", flush=True)
                return {"error": f"{type(exc).__name__}: {exc}"[:600]}
            print(human(m), flush=True)
            return {**asdict(m), "overrun": m.overrun}

        def search(steps: list[int], pipeline: int) -> dict[str, Any]:
            """The gateway at each step until the first overrun, an error or the time budget."""
            capacity: list[dict[str, Any]] = []
            searching = time.monotonic()
            label = "gateway" if pipeline == 1 else "gateway_pipelined"
            for step in steps:
                if time.monotonic() - searching > args.budget:
                    print(
                        f"capacity N={step}: not run (time budget of {args.budget:.0f} s spent)", flush=True
                    )
                    break
                row = attempt(
                    label,
                    lambda s=step: run_worker(
                        "gateway", site(s, pipeline), args.warmup, args.window, server, label
                    ),
                )
                capacity.append(row)
                if "error" in row or row["overrun"]:
                    break
            stopped_by = "the last step"
            if capacity and "error" in capacity[-1]:
                stopped_by = f"an error at the next step ({capacity[-1]['error'][:200]})"
            elif capacity and capacity[-1]["overrun"]:
                stopped_by = "an overrun"
            elif len(capacity) < len(steps):
                stopped_by = "the time budget"
            ok = [r for r in capacity if "error" not in r and not r["overrun"]]
            best = max(ok, key=lambda r: r["devices"], default=None)
            first_overrun = next((r["devices"] for r in capacity if r.get("overrun")), None)
            return {
                "pipeline": pipeline,
                "max_devices_no_overrun": best["devices"] if best else None,
                "cpu_percent": best["cpu_percent"] if best else None,
                "rss_mib": best["rss_mib"] if best else None,
                "first_overrun_devices": first_overrun,
                "budget_s": args.budget,
                "stopped_by": stopped_by,
                "steps": capacity,
            }

        n = args.meters
        side: dict[str, Any] = {}
        for kind in ("gateway", "raw_asyncio", "pymodbus"):
            side[kind] = attempt(
                kind, lambda k=kind: run_worker(k, site(n), args.warmup, args.window, server)
            )
        # the same with the lines' `pipeline` at 3 (a cycle's reads in one write), beside a raw loop that
        # writes them together too
        side["gateway_pipelined"] = attempt(
            "gateway_pipelined",
            lambda: run_worker(
                "gateway", site(n, PIPELINE), args.warmup, args.window, server, "gateway_pipelined"
            ),
        )
        side["raw_pipelined"] = attempt(
            "raw_pipelined",
            lambda: run_worker("raw_pipelined", site(n, PIPELINE), args.warmup, args.window, server),
        )
        if args.no_tb:
            side["thingsboard"] = {"skipped": "--no-tb"}
            print("thingsboard : skipped (--no-tb)")
        else:
            side["thingsboard"] = attempt(
                "thingsboard",
                lambda: run_thingsboard(cmeter.ports[:n], args.tb_warmup, args.window, server),
            )
        out["side_by_side"] = side
        g = side["gateway"]
        out["ratios"] = {
            "gateway_over_raw_asyncio": ratio(
                g.get("requests_per_cpu_s"), side["raw_asyncio"].get("requests_per_cpu_s")
            ),
            "gateway_over_pymodbus": ratio(
                g.get("requests_per_cpu_s"), side["pymodbus"].get("requests_per_cpu_s")
            ),
            "gateway_pipelined_over_raw_pipelined": ratio(
                side["gateway_pipelined"].get("requests_per_cpu_s"),
                side["raw_pipelined"].get("requests_per_cpu_s"),
            ),
            "gateway_pipelined_over_raw_asyncio": ratio(
                side["gateway_pipelined"].get("requests_per_cpu_s"),
                side["raw_asyncio"].get("requests_per_cpu_s"),
            ),
            "gateway_over_thingsboard_values": ratio(
                g.get("values_per_cpu_s"), side["thingsboard"].get("values_per_cpu_s")
            ),
        }

        flood = attempt(
            "server limit",
            lambda: run_worker("raw_flood", site(min(200, total)), 2.0, min(args.window, 5.0), server),
        )
        if "error" not in flood:
            flood["server_requests_per_cpu_s"] = (
                round(100 * flood["requests_per_s"] / flood["server_cpu_percent"])
                if flood["server_cpu_percent"] > 0
                else None
            )
            print(
                f"server limit: {flood['requests_per_s']:,.0f} req/s served at "
                f"{flood['server_cpu_percent']}% "
                f"of a core = {flood['server_requests_per_cpu_s'] or 0:,} req per server CPU-s "
                "(driven by the raw loop without a period)",
                flush=True,
            )
        out["server_limit"] = flood

        out["capacity"] = search(steps, 1)
        out["capacity_pipelined"] = search(pipelined_steps, PIPELINE)
        capacity = out["capacity"]["steps"]

        rss_n = args.rss_devices
        gw_rss = next((r for r in capacity if r.get("devices") == rss_n and "error" not in r), None)
        if gw_rss is None:
            gw_rss = attempt(
                "gateway", lambda: run_worker("gateway", site(rss_n), args.warmup, args.window, server)
            )
        raw_rss = attempt(
            "raw_asyncio", lambda: run_worker("raw_asyncio", site(rss_n), args.warmup, args.window, server)
        )
        out["rss"] = {
            "devices": rss_n,
            "gateway_rss_mib": gw_rss.get("rss_mib"),
            "raw_asyncio_rss_mib": raw_rss.get("rss_mib"),
            "gateway": gw_rss,
            "raw_asyncio": raw_rss,
        }
        # The side-by-side N is small for the gateway, whose detection, evidence and presence cost about the
        # same at any N: beside its largest N without overrun, the raw loop at that N too
        best = out["capacity"]["max_devices_no_overrun"]
        gw_best = next((r for r in capacity if r.get("devices") == best and "error" not in r), None)
        at: dict[str, Any] = {"devices": best, "gateway": gw_best, "raw_asyncio": None, "ratio": None}
        if best is not None and gw_best is not None:
            raw_best = (
                raw_rss
                if best == rss_n
                else attempt(
                    "raw_asyncio",
                    lambda: run_worker("raw_asyncio", site(best), args.warmup, args.window, server),
                )
            )
            at["raw_asyncio"] = raw_best
            at["ratio"] = ratio(gw_best.get("requests_per_cpu_s"), raw_best.get("requests_per_cpu_s"))
        out["at_capacity"] = at
    out["elapsed_s"] = round(time.monotonic() - began, 1)
    out["cpus"] = os.cpu_count()
    summary(out)
    return out


def summary(out: dict[str, Any]) -> None:
    r = out["ratios"]
    cap = out["capacity"]
    pcap = out["capacity_pipelined"]
    print(
        f"poll bench at {out['meters']} meters: gateway/raw asyncio {r['gateway_over_raw_asyncio']}, "
        f"gateway/pymodbus {r['gateway_over_pymodbus']} (requests per CPU-s); pipelined (pipeline "
        f"{PIPELINE}) gateway/raw pipelined {r['gateway_pipelined_over_raw_pipelined']}, gateway/raw asyncio "
        f"{r['gateway_pipelined_over_raw_asyncio']}; gateway/ThingsBoard "
        f"{r['gateway_over_thingsboard_values']} (values per CPU-s); capacity "
        f"{cap['max_devices_no_overrun']} "
        f"meters at 1 s without overrun (cpu {cap['cpu_percent']}%, first overrun at "
        f"{cap['first_overrun_devices']}), pipelined {pcap['max_devices_no_overrun']} (cpu "
        f"{pcap['cpu_percent']}%, first overrun at {pcap['first_overrun_devices']}); at "
        f"{out['at_capacity']['devices']} meters gateway/raw asyncio {out['at_capacity']['ratio']}; "
        f"RSS at {out['rss']['devices']}: gateway "
        f"{out['rss']['gateway_rss_mib']} MiB, raw {out['rss']['raw_asyncio_rss_mib']} MiB; "
        f"server: {out['server']}",
        flush=True,
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
