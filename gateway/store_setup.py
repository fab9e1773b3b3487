"""Daemon builders of the store-and-observe side (listed in gateway/daemon.py BUILDERS).

`build` comes BEFORE the source builders, so its subscriptions exist before any source publishes:
- the sink (gateway/sink/forwarder.py), when the site has an `influx:` section; a blocking subscriber,
  so a full spool queue slows the sources down instead of losing samples;
- the device view for the metrics (best-effort subscriber).
`build_http` comes LAST, so the HTTP app includes every router other builders registered, and its
components start after all others (which is what "started" means for /readyz and systemd READY=1).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.daemon import Component, Runtime
from gateway.health import mark_started, readiness
from gateway.metrics import DeviceView
from gateway.sdnotify import SystemdNotifier
from gateway.sink.deadletter import DeadLetters
from gateway.sink.forwarder import Forwarder
from gateway.sink.lineproto import LineEncoder
from gateway.sink.spool import Buffer, MemoryBuffer, Spool

log = logging.getLogger("meterwatch.store")

SINK_QUEUE = 20_000  # events; past this the bus blocks the sources until the spool catches up


def spool_path(rt: Runtime) -> Path:
    return rt.state_file(rt.site.config.spool.path, "spool.sqlite")


def make_forwarder(rt: Runtime) -> Forwarder:
    from gateway.sink.influx import InfluxWriter

    influx = rt.site.config.influx
    assert influx is not None
    spool_cfg = rt.site.config.spool
    buffer: Buffer
    if spool_cfg.mode == "durable":
        buffer = Spool(spool_path(rt), spool_cfg.max_bytes, spool_cfg.max_age)
    else:
        buffer = MemoryBuffer(spool_cfg.max_bytes, spool_cfg.max_age)
    sub = rt.bus.subscribe("sink", maxsize=SINK_QUEUE, overflow="block")
    return Forwarder(
        sub=sub,
        encoder=LineEncoder(rt.site),
        buffer=buffer,
        writer=InfluxWriter(influx),
        dead=DeadLetters(rt.state_dir / "deadletter.jsonl"),
        batch_size=influx.batch_size,
        flush_interval=influx.flush_interval,
        replay_rate=spool_cfg.replay_rate,
    )


def live_rate(rt: Runtime) -> float:
    """Samples per second the site's devices produce at their configured intervals."""
    total = 0.0
    for d in rt.site.config.devices:
        interval = d.poll_interval if d.source == "modbus" else (d.expected_interval or 1.0)
        total += 1.0 / interval
    return total


def build(rt: Runtime) -> list[Component]:
    comps: list[Component] = []
    view = DeviceView(rt.site)
    view.attach(rt.bus)
    rt.services["device_view"] = view
    comps.append(view)
    influx = rt.site.config.influx
    if influx is None:
        log.warning(
            "no influx section in the site file: samples feed the rules and the metrics but are NOT stored"
        )
        return comps
    fw = make_forwarder(rt)
    rt.services["sink"] = fw
    comps.append(fw)
    rate = live_rate(rt)
    if rate >= rt.site.config.spool.replay_rate:
        log.warning(
            "spool.replay_rate is not above the site's sample rate: a backlog would never drain",
            extra={
                "fields": {"replay_rate": rt.site.config.spool.replay_rate, "samples_per_s": round(rate, 1)}
            },
        )
    log.info(
        "storing samples",
        extra={
            "fields": {
                "url": influx.url,
                "bucket": influx.bucket,
                "mode": rt.site.config.spool.mode,
                "spool": str(spool_path(rt)) if rt.site.config.spool.mode == "durable" else "memory",
                "spooled": fw.buffer.stats.points,
            }
        },
    )
    return comps


class _StartMarker:
    """Marks the runtime started when it runs: it is the last component, so all others have started."""

    name = "started"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def run(self, stop: asyncio.Event) -> None:
        mark_started(self.rt.services)
        await stop.wait()


def build_http(rt: Runtime) -> list[Component]:
    comps: list[Component] = []
    http = rt.site.config.http
    if http.enabled:
        from gateway.http import HttpServer, make_app

        app = make_app(rt.site, rt.services, rt.bus)
        comps.append(HttpServer(app, http.host, http.port, rt.services))
    comps.append(SystemdNotifier(lambda: readiness(rt.services)[0]))
    comps.append(_StartMarker(rt))
    return comps
