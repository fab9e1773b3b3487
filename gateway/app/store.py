"""The store side of the daemon: the device presence view for the metrics (a best-effort subscriber) and,
when the site has an `influx:` section, the sink (gateway/sink/forwarder.py): a blocking subscriber, so a
full spool queue slows the sources down instead of losing samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.app.component import state_file
from gateway.config import Site
from gateway.core.bus import Bus
from gateway.observe.presence import DevicePresence
from gateway.sink.deadletter import DeadLetters
from gateway.sink.forwarder import Forwarder
from gateway.sink.influx import InfluxWriter
from gateway.sink.lineproto import LineEncoder
from gateway.sink.spool import Buffer, MemoryBuffer, Spool

log = logging.getLogger("meterwatch.store")

SINK_QUEUE = 20_000  # events; past this the bus blocks the sources until the spool catches up


def spool_path(site: Site, state_dir: Path) -> Path:
    return state_file(site.path.parent, state_dir, site.config.spool.path, "spool.sqlite")


def make_forwarder(site: Site, bus: Bus, state_dir: Path) -> Forwarder:
    influx = site.config.influx
    assert influx is not None
    spool_cfg = site.config.spool
    buffer: Buffer
    if spool_cfg.mode == "durable":
        buffer = Spool(spool_path(site, state_dir), spool_cfg.max_bytes, spool_cfg.max_age)
    else:
        buffer = MemoryBuffer(spool_cfg.max_bytes, spool_cfg.max_age)
    sub = bus.subscribe("sink", maxsize=SINK_QUEUE, overflow="block")
    return Forwarder(
        sub=sub,
        encoder=LineEncoder(site),
        buffer=buffer,
        writer=InfluxWriter(influx),
        dead=DeadLetters(state_dir / "deadletter.jsonl"),
        batch_size=influx.batch_size,
        flush_interval=influx.flush_interval,
        replay_rate=spool_cfg.replay_rate,
    )


def live_rate(site: Site) -> float:
    """Samples per second the site's devices produce at their configured intervals."""
    total = 0.0
    for d in site.config.devices:
        interval = d.poll_interval if d.source == "modbus" else (d.expected_interval or 1.0)
        total += 1.0 / interval
    return total


def build_presence(site: Site, bus: Bus) -> DevicePresence:
    presence = DevicePresence(site)
    presence.attach(bus)
    return presence


def build_sink(site: Site, bus: Bus, state_dir: Path) -> Forwarder | None:
    """The sink, or None (with a warning) when the site has no influx section."""
    influx = site.config.influx
    if influx is None:
        log.warning(
            "no influx section in the site file: samples feed the rules and the metrics but are NOT stored"
        )
        return None
    fw = make_forwarder(site, bus, state_dir)
    spool = site.config.spool
    rate = live_rate(site)
    if rate >= spool.replay_rate:
        log.warning(
            "spool.replay_rate is not above the site's sample rate: a backlog would never drain",
            extra={"fields": {"replay_rate": spool.replay_rate, "samples_per_s": round(rate, 1)}},
        )
    log.info(
        "storing samples",
        extra={
            "fields": {
                "url": influx.url,
                "bucket": influx.bucket,
                "mode": spool.mode,
                "spool": str(spool_path(site, state_dir)) if spool.mode == "durable" else "memory",
                "spooled": fw.buffer.stats.points,
                # the C line-protocol encoder (gateway/sink/_lineenc.c), or the Python one (same bytes)
                "encoder": "c" if fw.encoder.accelerated else "python",
            }
        },
    )
    return fw
