"""/metrics at scale: how long a scrape stalls the event loop, and how big the answer is.

A site of N SDM630 meters (default 1,000), `--per-line` of them on each RTU-over-TCP line, with synthetic
stats of the real types (DeviceStats and LineStats with requests, errors of a few kinds and a filled
round-trip histogram; the presence view fed one sample per device). The daemon's real HTTP server
(uvicorn in this loop, port 0) serves it; a thread scrapes /metrics over real HTTP while a heartbeat task
on the loop wakes every 5 ms: its worst lateness during a scrape is the loop's stall (what polling would
have suffered).

Measured in the same run, side by side:
- before: the families and the text made on the loop (the handler as it was: generate_latest(registry));
- after: the snapshot taken on the loop, rendered in the worker thread (gateway/observe/metrics.py),
  for each `http.metrics_detail` (device, line).

Prints one human line per variant and one JSON line with every figure. Nothing is asserted (tests
assert the structure: tests/gateway/observe/test_metrics_scale.py).

    .venv/bin/python bench/metrics_scrape.py [--devices 1000] [--per-line 25] [--scrapes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/metrics_scrape.py`
    sys.path.insert(0, str(ROOT))

from fastapi import FastAPI  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: E402

from gateway.config import Site, load_site  # noqa: E402
from gateway.core.stats import DeviceStats, LineStats  # noqa: E402
from gateway.core.types import Sample  # noqa: E402
from gateway.observe.health import Readiness  # noqa: E402
from gateway.observe.http import HttpServer, make_app  # noqa: E402
from gateway.observe.metrics import Exported, GatewayCollector, make_registry  # noqa: E402
from gateway.observe.presence import DevicePresence  # noqa: E402

HEARTBEAT = 0.005


def site_text(devices: int, per_line: int, detail: str) -> str:
    n_lines = (devices + per_line - 1) // per_line
    lines = "\n".join(
        f"  - {{id: l{i}, transport: rtu_over_tcp, host: 127.0.0.1, port: {20000 + i}}}"
        for i in range(n_lines)
    )
    devs = "\n".join(
        f"  - {{id: meter{i}, building: B{i % 20}, domain: B{i % 20}-power, line: l{i // per_line},"
        f" unit: {i % per_line + 1}, profile: sdm630}}"
        for i in range(devices)
    )
    buildings = "\n".join(f"  - {{id: B{b}, domains: [{{id: B{b}-power, kind: power}}]}}" for b in range(20))
    return f"""site: {{id: bench, name: Metrics bench}}
buildings:
{buildings}
lines:
{lines}
devices:
{devs}
http: {{port: 0, metrics_detail: {detail}}}
"""


def synthetic(site: Site) -> Exported:
    """Stats of the real types, as a few hours of polling would leave them."""
    now = time.time()
    devices: dict[str, DeviceStats] = {}
    lines: dict[str, LineStats] = {}
    for k, d in enumerate(site.config.devices):
        assert d.line is not None
        st = DeviceStats(device=d.id, line=d.line, requests=30_000 + k, cycles=10_000, samples=10_000)
        st.errors.update({"timeout": k % 7, "crc": k % 3, "exception_2": k % 2})
        for j in range(60):
            st.rtt.observe(0.004 + 0.001 * ((k + j) % 40))
        st.last_success = now - (k % 5)
        st.skipped_cycles = k % 4
        devices[d.id] = st
        ls = lines.setdefault(d.line, LineStats(line=d.line, transport="rtu_over_tcp", connected=True))
        ls.requests += st.requests
        ls.errors.update({"timeout": k % 7})
    presence = DevicePresence(site)
    for d in site.config.devices:
        presence.feed(Sample(d.id, now, {"power": 1.0}), now=now)
    return Exported(lines=lines, devices=devices, presence=presence)


def on_loop_app(site: Site, exported: Exported) -> FastAPI:
    """The handler as it was before the snapshot: families and text made on the loop."""
    app = FastAPI()
    registry = make_registry(site, exported)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
        body: bytes = resp.read()
        return body


@dataclass
class Figures:
    variant: str
    detail: str
    devices: int
    lines: int
    bytes: int
    text_lines: int
    stall_max_s: float  # the heartbeat's worst lateness during a scrape (median over the scrapes)
    stall_worst_s: float  # ... and the worst over all scrapes
    snapshot_ms: float  # the loop's share with the snapshot: collector.snapshot() alone (median)
    scrape_s: float  # one scrape, request to last byte (median)


async def measure(variant: str, app: FastAPI, site: Site, exported: Exported, scrapes: int) -> Figures:
    server = HttpServer(app, "127.0.0.1", 0)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    while server.bound_port is None:
        await asyncio.sleep(0.01)
    port = server.bound_port
    worst = 0.0
    beating = True

    async def heartbeat() -> None:
        nonlocal worst
        while beating:
            t0 = time.perf_counter()
            await asyncio.sleep(HEARTBEAT)
            worst = max(worst, time.perf_counter() - t0 - HEARTBEAT)

    beat = asyncio.create_task(heartbeat())
    stalls: list[float] = []
    durations: list[float] = []
    body = b""
    try:
        await asyncio.to_thread(get, port)  # warm-up: imports, first connection
        for _ in range(scrapes):
            await asyncio.sleep(0.05)
            worst = 0.0
            t0 = time.perf_counter()
            body = await asyncio.to_thread(get, port)
            durations.append(time.perf_counter() - t0)
            stalls.append(worst)
    finally:
        beating = False
        await beat
        stop.set()
        await task
    collector = GatewayCollector(site, exported)
    snaps = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        collector.snapshot()
        snaps.append(time.perf_counter() - t0)
    return Figures(
        variant=variant,
        detail=site.config.http.metrics_detail,
        devices=len(site.config.devices),
        lines=len(site.config.lines),
        bytes=len(body),
        text_lines=body.count(b"\n"),
        stall_max_s=round(statistics.median(stalls), 4),
        stall_worst_s=round(max(stalls), 4),
        snapshot_ms=round(1000 * statistics.median(snaps), 2),
        scrape_s=round(statistics.median(durations), 4),
    )


async def main_async(devices: int, per_line: int, scrapes: int) -> list[Figures]:
    out: list[Figures] = []
    with tempfile.TemporaryDirectory() as tmp:
        for detail in ("device", "line"):
            path = Path(tmp) / f"site-{detail}.yaml"
            path.write_text(site_text(devices, per_line, detail))
            site = load_site(path)
            exported = synthetic(site)
            if detail == "device":
                out.append(
                    await measure("before (on loop)", on_loop_app(site, exported), site, exported, scrapes)
                )
            app = make_app(site, exported, Readiness())
            out.append(await measure("after (snapshot + thread)", app, site, exported, scrapes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--per-line", type=int, default=25)
    ap.add_argument("--scrapes", type=int, default=5)
    args = ap.parse_args()
    figures = asyncio.run(main_async(args.devices, args.per_line, args.scrapes))
    for f in figures:
        print(
            f"{f.variant:26} detail={f.detail:6} {f.devices} devices on {f.lines} lines: "
            f"{f.bytes / 1e6:.2f} MB, {f.text_lines} lines; "
            f"loop stall per scrape {f.stall_max_s * 1000:.0f} ms (worst {f.stall_worst_s * 1000:.0f} ms); "
            f"snapshot {f.snapshot_ms:.1f} ms; scrape {f.scrape_s:.2f} s"
        )
    print(json.dumps({"bench": "metrics_scrape", "figures": [asdict(f) for f in figures]}))


if __name__ == "__main__":
    main()
