"""Every configured device as the bus shows it: when it last sent a sample, whether its source says it is up,
and the last DeviceInfo it gave. /metrics reads it for `meterwatch_device_up` of devices no poller keeps
stats for (MQTT sensors: up while they publish within 3 expected intervals) and `meterwatch_device_info`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from gateway.config import Site
from gateway.core.bus import Bus, Subscription
from gateway.core.types import DeviceInfo, DeviceStatus, Sample

STALE_INTERVALS = 3.0  # an MQTT device is down after this many expected intervals without a sample
MIN_STALE_SECONDS = 10.0
# Seen at most this late: against staleness of 10 s or more, a wake-up per event is not worth its CPU
PACE = 0.25


@dataclass
class DeviceSeen:
    last_sample: float | None = None  # wall-clock time the last sample was seen on the bus
    status_up: bool | None = None
    reason: str = ""
    samples: int = 0
    info: dict[str, str] = field(default_factory=dict)  # the last DeviceInfo's text


@dataclass
class DevicePresence:
    """Every configured device as the bus shows it (a best-effort subscriber: it never slows sources)."""

    site: Site
    devices: dict[str, DeviceSeen] = field(default_factory=dict)
    name: str = "device-presence"
    sub: Subscription | None = None

    def __post_init__(self) -> None:
        for d in self.site.config.devices:
            self.devices[d.id] = DeviceSeen()

    def attach(self, bus: Bus) -> None:
        self.sub = bus.subscribe(self.name, maxsize=10_000, overflow="drop_oldest", pace=PACE)

    def feed(self, event: object, now: float | None = None) -> None:
        if isinstance(event, Sample):
            seen = self.devices.setdefault(event.device, DeviceSeen())
            seen.last_sample = time.time() if now is None else now
            seen.samples += 1
        elif isinstance(event, DeviceStatus):
            seen = self.devices.setdefault(event.device, DeviceSeen())
            seen.status_up = event.up
            seen.reason = event.reason
        elif isinstance(event, DeviceInfo):
            self.devices.setdefault(event.device, DeviceSeen()).info = dict(event.text)

    def up(self, device: str, now: float) -> bool:
        seen = self.devices.get(device)
        if seen is None or seen.last_sample is None or seen.status_up is False:
            return False
        try:
            d = self.site.device(device)
            interval = d.expected_interval or d.poll_interval
        except KeyError:
            interval = 1.0
        return now - seen.last_sample <= max(MIN_STALE_SECONDS, STALE_INTERVALS * interval)

    async def run(self, stop: asyncio.Event) -> None:
        assert self.sub is not None, "attach() first"
        sub = self.sub
        while not stop.is_set():
            ev = await sub.get_until(stop)
            if ev is not None:
                self.feed(ev)
