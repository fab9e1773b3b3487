"""The daemon: one bus, sources that publish to it, consumers that read from it, a clean stop on signals.

Each capability contributes components through a builder in BUILDERS. A builder takes the runtime context
and returns the components it needs (none when the site does not use it), so adding a capability is one
line here and no change elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.config import Site
from gateway.core.bus import Bus

log = logging.getLogger("meterwatch.daemon")


class Component(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then return after a clean shutdown."""


@dataclass
class Runtime:
    site: Site
    bus: Bus
    state_dir: Path
    components: list[Component] = field(default_factory=list)
    # name -> object, for components that need another's handle (e.g. the HTTP API and the incident store)
    services: dict[str, object] = field(default_factory=dict)

    def state_file(self, configured: Path | None, default_name: str) -> Path:
        """A file the site file may place: relative paths are read from the site file's folder."""
        if configured is None:
            return self.state_dir / default_name
        return configured if configured.is_absolute() else self.site.path.parent / configured


Builder = Callable[[Runtime], list[Component]]

# "module:function" builders, in start order: consumers first so they subscribe before sources publish.
BUILDERS: list[str] = [
    "gateway.store_setup:build",
    "gateway.detect_setup:build",
    "gateway.modbus_setup:build",
    "gateway.mqtt_setup:build",
    "gateway.store_setup:build_http",  # last: serves the routers every builder above registered
]


def _load_builder(spec: str) -> Builder:
    module, _, func = spec.partition(":")
    fn: Builder = getattr(importlib.import_module(module), func)
    return fn


def build_runtime(site: Site, state_dir: Path | None = None) -> Runtime:
    rt = Runtime(site=site, bus=Bus(), state_dir=state_dir or default_state_dir(site))
    rt.state_dir.mkdir(parents=True, exist_ok=True)
    for spec in BUILDERS:
        rt.components.extend(_load_builder(spec)(rt))
    return rt


def default_state_dir(site: Site) -> Path:
    return Path("var") / site.config.site.id


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
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        rt = build_runtime(site, state_dir)
        if tap is not None:  # debug: every published sample to a JSON-lines file (gateway/sink/tap.py)
            from gateway.sink.tap import SampleTap

            rt.components.insert(0, SampleTap(rt.bus, tap))
        await serve(rt, stop)

    asyncio.run(main())
    return 0
