"""Polling capacity: how many SDM630 meters over Modbus TCP one gateway polls every second without overrun.

Every meter is its own Modbus TCP endpoint (unit 1), served by the simulators in their own process
(`meterwatch simulate`). For N = 10, 25, 50, ..., 800, 1200, 1600, 2400 (stopping at the first N that
overruns or when the time budget is spent) a fresh gateway process runs the daemon's components as
`meterwatch run` would (every builder: Modbus line actors, store, metrics, HTTP) with a 1 s poll; after a
warm-up it is watched for a window: any skipped cycle, failed request or device down in it is an overrun.

Measured on the 2-core development machine (two runs): 1600 meters (4800 requests/s) without overrun,
gateway 87-90% of one core and 140 MiB RSS; first overrun at 2400; the raw loop at 1600: 34-37% CPU,
74 MiB; gateway/raw CPU ratio 2.5-2.6. 1600 is at the edge: a run starting at 1600 overran once.

At the largest N without overrun, a raw asyncio pymodbus loop (one client per meter, the same planned reads
every second, no decoding or bus) runs against the same simulators; the ratio of the gateway's CPU to the
raw loop's is the price of everything the gateway does beyond moving the bytes.

Prints one human line per step, a summary line, and one JSON line with every figure.
Figures depend on the machine and its load (other processes share the two cores); nothing is asserted.

    .venv/bin/python bench/poll.py [--steps 10,25,50] [--window 6] [--warmup 3] [--budget 150]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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

DEFAULT_STEPS = (10, 25, 50, 100, 200, 400, 800, 1200, 1600, 2400)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------- site files


def site_text(ports: list[int], poll_interval: float, timeout: float) -> str:
    """A site with one SDM630 per Modbus TCP endpoint; HTTP on a free port; no storage."""
    lines = "\n".join(
        f"  - {{id: m{i}, transport: tcp, host: 127.0.0.1, port: {p}, timeout: {timeout}}}"
        for i, p in enumerate(ports)
    )
    devices = "\n".join(
        f"  - {{id: meter{i}, building: B1, domain: B1-power, line: m{i}, unit: 1, profile: sdm630,"
        f" poll_interval: {poll_interval}}}"
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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class Window:
    """What one worker saw in its measuring window."""

    kind: str  # "gateway" or "raw"
    devices: int
    seconds: float
    cpu_percent: float
    rss_mib: float
    peak_rss_mib: float
    requests: int
    cycles: int
    skipped_cycles: int
    errors: int
    down: int
    late_cycles: int = 0  # raw loop only: a cycle that started more than one interval late


# ------------------------------------------------------------------------------------------------ workers


def mark(edge: str) -> None:
    """Tell the orchestrator the window starts or ends (it measures the simulators' CPU over it)."""
    print(f"WINDOW {edge}", flush=True)


async def gateway_worker(site_path: Path, warmup: float, window: float) -> Window:
    """The daemon's components on `site_path`; counters and CPU over [warmup, warmup + window]."""
    from gateway.app.daemon import build_runtime, serve
    from gateway.config import load_site
    from gateway.core.stats import DeviceStats

    site = load_site(site_path)
    with tempfile.TemporaryDirectory(prefix="meterwatch-bench-") as tmp:
        rt = build_runtime(site, state_dir=Path(tmp))
        stats: dict[str, DeviceStats] = rt.services.device_stats()
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(rt, stop))

        def totals() -> tuple[int, int, int, int]:
            s = stats.values()
            return (
                sum(d.requests for d in s),
                sum(d.cycles for d in s),
                sum(d.skipped_cycles for d in s),
                sum(sum(d.errors.values()) for d in s),
            )

        await asyncio.sleep(warmup)
        mark("start")
        t0, c0, before = time.monotonic(), time.process_time(), totals()
        await asyncio.sleep(window)
        t1, c1, after = time.monotonic(), time.process_time(), totals()
        mark("end")
        down = sum(1 for d in stats.values() if not d.up)
        stop.set()
        await serving
    rss, peak = rss_mib()
    req, cyc, skip, err = (a - b for a, b in zip(after, before, strict=True))
    return Window(
        "gateway", len(stats), t1 - t0, 100 * (c1 - c0) / (t1 - t0), rss, peak, req, cyc, skip, err, down
    )


async def raw_worker(site_path: Path, warmup: float, window: float) -> Window:
    """The same planned reads with bare pymodbus clients, one task per meter, nothing done with the words."""
    from pymodbus.client import AsyncModbusTcpClient

    from gateway.app.modbus import modbus_specs
    from gateway.config import load_site

    site = load_site(site_path)
    specs = [(line, devices[0]) for line, devices in modbus_specs(site) if devices]
    counts = {"requests": 0, "cycles": 0, "errors": 0, "late": 0}
    measuring = asyncio.Event()
    stop = asyncio.Event()

    async def meter(
        host: str, port: int, timeout: float, requests: list[Any], unit: int, interval: float
    ) -> None:
        client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0)
        await client.connect()
        due = time.monotonic()
        try:
            while not stop.is_set():
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval and measuring.is_set():
                    counts["late"] += 1
                for r in requests:
                    try:
                        rr = await client.read_input_registers(r.address, count=r.count, device_id=unit)
                        failed = rr.isError()
                    except Exception:
                        failed = True
                    if measuring.is_set():
                        counts["requests"] += 1
                        counts["errors"] += int(failed)
                if measuring.is_set():
                    counts["cycles"] += 1
                due += interval
        finally:
            client.close()

    tasks = [
        asyncio.create_task(
            meter(
                line.host or "127.0.0.1",
                line.port or 502,
                line.timeout,
                list(dev.requests),
                dev.unit,
                dev.poll_interval,
            )
        )
        for line, dev in specs
    ]
    await asyncio.sleep(warmup)
    mark("start")
    t0, c0 = time.monotonic(), time.process_time()
    measuring.set()
    await asyncio.sleep(window)
    measuring.clear()
    t1, c1 = time.monotonic(), time.process_time()
    mark("end")
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rss, peak = rss_mib()
    return Window(
        "raw",
        len(specs),
        t1 - t0,
        100 * (c1 - c0) / (t1 - t0),
        rss,
        peak,
        counts["requests"],
        counts["cycles"],
        0,
        counts["errors"],
        0,
        counts["late"],
    )


def worker_main(kind: str, site_path: Path, warmup: float, window: float) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # the daemon's info lines would be noise here
    run = gateway_worker if kind == "gateway" else raw_worker
    result = asyncio.run(run(site_path, warmup, window))
    print("RESULT " + json.dumps(asdict(result)), flush=True)


# ------------------------------------------------------------------------------------------- orchestrator


def run_worker(
    kind: str, site_path: Path, warmup: float, window: float, sim_pid: int
) -> tuple[Window, float]:
    """Run one worker; its figures and the simulators' CPU % over the same window."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--site", str(site_path)]
    cmd += ["--warmup", str(warmup), "--window", str(window)]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT)
        assert proc.stdout is not None
        result: Window | None = None
        sim_start = sim_cpu = 0.0
        t_start = time.monotonic()
        for line in proc.stdout:
            if line.startswith("WINDOW start"):
                sim_start, t_start = proc_cpu_seconds(sim_pid), time.monotonic()
            elif line.startswith("WINDOW end"):
                sim_cpu = 100 * (proc_cpu_seconds(sim_pid) - sim_start) / (time.monotonic() - t_start)
            elif line.startswith("RESULT "):
                result = Window(**json.loads(line[len("RESULT ") :]))
        code = proc.wait(timeout=60)
        if result is None:
            errors.seek(0)
            raise RuntimeError(f"{kind} worker failed (exit {code}):\n{errors.read()[-3000:]}")
    return result, sim_cpu


@dataclass
class Step:
    gateway: Window
    sim_cpu_percent: float

    @property
    def overrun(self) -> bool:
        g = self.gateway
        return g.skipped_cycles > 0 or g.errors > 0 or g.down > 0


def largest_ok(steps: list[Step]) -> Step | None:
    return max((s for s in steps if not s.overrun), key=lambda s: s.gateway.devices, default=None)


def human(step: Step) -> str:
    g = step.gateway
    verdict = "OVERRUN" if step.overrun else "ok"
    return (
        f"N={g.devices:4d}: {verdict:7s} gateway cpu {g.cpu_percent:5.1f}% rss {g.rss_mib:6.1f} MiB, "
        f"{g.requests / g.seconds:7.1f} req/s, {g.cycles} cycles, skipped {g.skipped_cycles}, "
        f"errors {g.errors}, down {g.down}; simulators cpu {step.sim_cpu_percent:5.1f}%"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="device counts, ascending")
    ap.add_argument(
        "--warmup", type=float, default=3.0, help="seconds before measuring (connects, first cycles)"
    )
    ap.add_argument("--window", type=float, default=6.0, help="seconds measured per step")
    ap.add_argument("--budget", type=float, default=150.0, help="start no step after this many seconds")
    ap.add_argument("--timeout", type=float, default=1.0, help="per-request timeout of the lines")
    ap.add_argument("--worker", choices=("gateway", "raw"), help=argparse.SUPPRESS)
    ap.add_argument("--site", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker, args.site, args.warmup, args.window)
        return

    from simulators.ports import free_ports
    from simulators.runner import SimulatorProcess

    began = time.monotonic()
    steps = sorted({int(s) for s in args.steps.split(",")})
    cap = steps[-1]
    ports = free_ports(cap)
    steps_done: list[Step] = []
    raw: Window | None = None
    with tempfile.TemporaryDirectory(prefix="meterwatch-bench-") as tmp:
        sim_site = Path(tmp) / "sim.yaml"
        sim_site.write_text(site_text(ports, 1.0, args.timeout), encoding="utf-8")
        # One simulator process serves all `cap` meters; each step's gateway polls the first N of them.
        sim = SimulatorProcess.spawn(sim_site, args=("--no-mqtt", "--log-level", "error"), timeout=60)
        try:
            for n in steps:
                if time.monotonic() - began > args.budget:
                    print(f"N={n:4d}: not run (time budget of {args.budget:.0f} s spent)", flush=True)
                    break
                site = Path(tmp) / f"gw{n}.yaml"
                site.write_text(site_text(ports[:n], 1.0, args.timeout), encoding="utf-8")
                window, sim_cpu = run_worker("gateway", site, args.warmup, args.window, sim.proc.pid)
                step = Step(window, sim_cpu)
                steps_done.append(step)
                print(human(step), flush=True)
                if step.overrun:
                    break
            best = largest_ok(steps_done)
            if best is not None:
                n = best.gateway.devices
                raw, raw_sim_cpu = run_worker(
                    "raw", Path(tmp) / f"gw{n}.yaml", args.warmup, args.window, sim.proc.pid
                )
                print(
                    f"N={n:4d}: raw pymodbus loop cpu {raw.cpu_percent:5.1f}% rss {raw.rss_mib:6.1f} MiB, "
                    f"{raw.requests / raw.seconds:7.1f} req/s, errors {raw.errors}, "
                    f"late cycles {raw.late_cycles}; simulators cpu {raw_sim_cpu:5.1f}%",
                    flush=True,
                )
        finally:
            sim.stop()
    summary(steps_done, raw, time.monotonic() - began, args)


def summary(steps: list[Step], raw: Window | None, elapsed: float, args: argparse.Namespace) -> None:
    best = largest_ok(steps)
    first_overrun = next((s.gateway.devices for s in steps if s.overrun), None)
    ratio = None
    if best is not None and raw is not None and raw.cpu_percent > 0:
        ratio = best.gateway.cpu_percent / raw.cpu_percent
    if best is None:
        print("poll bench: every step overran (see above)")
    else:
        g = best.gateway
        limit = (
            f"first overrun at N={first_overrun}" if first_overrun else "no overrun up to the largest step"
        )
        print(
            f"poll bench: {g.devices} SDM630 over Modbus TCP at 1 s without overrun ({limit}); gateway cpu "
            f"{g.cpu_percent:.1f}% rss {g.rss_mib:.1f} MiB; raw pymodbus loop cpu "
            f"{raw.cpu_percent if raw else float('nan'):.1f}%; gateway/raw cpu ratio "
            f"{ratio if ratio is not None else float('nan'):.2f}"
        )
    print(
        json.dumps(
            {
                "bench": "poll",
                "max_devices_no_overrun": best.gateway.devices if best else 0,
                "first_overrun_devices": first_overrun,
                "gateway_cpu_percent": round(best.gateway.cpu_percent, 1) if best else None,
                "gateway_rss_mib": round(best.gateway.rss_mib, 1) if best else None,
                "raw_cpu_percent": round(raw.cpu_percent, 1) if raw else None,
                "raw_rss_mib": round(raw.rss_mib, 1) if raw else None,
                "cpu_ratio_gateway_over_raw": round(ratio, 2) if ratio is not None else None,
                "window_s": args.window,
                "elapsed_s": round(elapsed, 1),
                "cpus": os.cpu_count(),
                "steps": [
                    {**asdict(s.gateway), "sim_cpu_percent": round(s.sim_cpu_percent, 1)} for s in steps
                ],
                "raw": asdict(raw) if raw else None,
            }
        )
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
