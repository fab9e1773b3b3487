"""The events every source produces and every consumer reads (drivers produce nothing else)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# "good": read and decoded as the profile says. "stale": a value the source repeats without a fresh
# reading (e.g. an MQTT retained message). "comm_error" / "decode_error" mark partial samples whose
# other values could not be read or decoded in the same cycle.
Quality = Literal["good", "stale", "comm_error", "decode_error"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Readings of one device at one instant. `ts` is UTC epoch seconds, stamped when the read completed."""

    device: str
    ts: float
    values: Mapping[str, float]
    quality: Quality = "good"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device changed between answering (`up`) and not answering; `reason` says why it is down."""

    device: str
    ts: float
    up: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A whole source (an MQTT broker connection, a Modbus line) changed connection state."""

    source: str
    ts: float
    connected: bool
    reason: str = ""
    devices: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a device says about itself (serial number, firmware version): text, not readings.

    Read when the device comes up and then at most every info refresh; `text` maps the profile's info points
    to their text. Consumers that store or judge readings (the sink, the rules) ignore it.
    """

    device: str
    ts: float
    text: Mapping[str, str]


Event = Sample | DeviceStatus | SourceStatus | DeviceInfo
