"""The daemon: one bus, sources that publish to it, consumers that read from it, a clean stop on signals.

`build_runtime` wires the parts with explicit calls in start order: consumers first (presence, sink,
detection), so their subscriptions exist before any source publishes; then the sources (Modbus lines,
MQTT); the HTTP server, systemd notifier and start marker last, so /readyz and READY=1 mean that every
other component has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from gateway.app import detect, modbus, mqtt, store, web
from gateway.app.component import Component
from gateway.app.services import Services
from gateway.config import Site
from gateway.core import gctune
from gateway.core.bus import Bus
from gateway.observe.health import Readiness
from gateway.observe.http import HttpServer, make_app
from gateway.observe.sdnotify import SystemdNotifier

log = logging.getLogger("meterwatch.daemon")


@dataclass
class Runtime:
    site: Site
    bus: Bus
    state_dir: Path
    services: Services
    components: list[Component] = field(default_factory=list)


def build_runtime(
    site: Site, state_dir: Path | None = None, tune_gc: gctune.GcSettings | None = None
) -> Runtime:
    """The daemon's parts in start order. `tune_gc`: the collector's settings, applied once every other
    component has started (`meterwatch run` and the benches that measure it pass METERWATCH_GC's); None
    leaves the collector as it is (tests, the demo)."""
    state = state_dir or default_state_dir(site)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    # the state dir holds readings, incidents with residents' buildings, the link secret: owner only
    with contextlib.suppress(PermissionError):
        state.chmod(0o700)
    bus = Bus()
    presence = store.build_presence(site, bus)
    sink = store.build_sink(site, bus, state)
    detection = detect.build(site, bus, state, presence)
    lines = modbus.build(site, bus)
    subscriber = mqtt.build(site, bus)
    services = Services(
        presence=presence,
        readiness=Readiness(sink),
        sink=sink,
        incidents=detection.manager,
        responder=detection.responder,
        desk=detection.desk,
        evidence=detection.evidence,
        retention=detection.retention,
        lines=lines,
        mqtt=subscriber,
        routers=web.build(site, detection, presence),
        fleet=None if detection.fleet is None else detection.fleet.publisher,
        fleet_commands=None if detection.fleet is None else detection.fleet.commands,
    )
    components: list[Component] = [presence]
    if sink is not None:
        components.append(sink)
    components.append(detection.detector)
    components.append(detection.responder)
    components.append(detection.evidence)
    components.append(detection.retention)
    if detection.fleet is not None:  # the fleet bridge's publisher (its own thread and paho's)
        components.append(detection.fleet.publisher)
        if detection.fleet.commands is not None:  # fleet.commands: signed commands from the fleet view
            components.append(detection.fleet.commands)
        if detection.fleet.peers is not None:  # a shard: its peer shards' incidents of the same cause
            components.append(detection.fleet.peers)
    components.extend(lines)
    if subscriber is not None:
        components.append(subscriber)
    if site.config.http.enabled:
        app = make_app(site, services.exported(), services.readiness, services.routers, bus)
        services.http = HttpServer(app, site.config.http.host, site.config.http.port)
        components.append(services.http)
    components.append(SystemdNotifier(lambda: services.readiness.ready))
    components.append(_StartMarker(services.readiness))
    if tune_gc is not None:
        # last: freezes what start-up built and sets the collector (issue 11; gateway/core/gctune.py)
        components.append(gctune.AfterStart(tune_gc))
    return Runtime(site=site, bus=bus, state_dir=state, services=services, components=components)


class _StartMarker:
    """Marks the runtime started when it runs: it is the last component, so all others have started."""

    name = "started"

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def run(self, stop: asyncio.Event) -> None:
        self.readiness.mark_started()
        await stop.wait()


def default_state_dir(site: Site) -> Path:
    """var/<site id>, or var/<site id>.shard-<shard id>: each shard its own spool, store and lock."""
    return Path("var") / site.local_id


async def serve(rt: Runtime, stop: asyncio.Event) -> None:
    log.info(
        "meterwatch starting",
        extra={"fields": {"site": rt.site.config.site.id, "components": len(rt.components)}},
    )
    tasks = [asyncio.create_task(c.run(stop), name=c.name) for c in rt.components]
    stop_wait = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    for t in done:
        if t is not stop_wait and t.exception() is not None:
            log.error("component %s failed", t.get_name(), exc_info=t.exception())
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop_wait.cancel()
    log.info("meterwatch stopped")


def run_daemon(site: Site, state_dir: Path | None = None, tap: Path | None = None) -> int:
    # every file the daemon creates (spool, incident store and its WAL, dead letters, the link secret) is
    # the owner's alone, whatever umask the service was started with
    os.umask(0o077)
    try:  # read before anything starts: a bad METERWATCH_GC stops the daemon with one clear line
        gc_settings = gctune.settings_from_env()
    except ValueError as exc:
        log.error("%s", exc)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        rt = build_runtime(site, state_dir, tune_gc=gc_settings)
        if tap is not None:  # debug: every published sample to a JSON-lines file (gateway/sink/tap.py)
            from gateway.sink.tap import SampleTap

            rt.components.insert(0, SampleTap(rt.bus, tap))
        await serve(rt, stop)

    asyncio.run(main())
    log.info("garbage collector pauses", extra={"fields": gctune.summary()})
    return 0
