"""The site file's `incidents:` section: where incidents are kept, how often the gateway says it is alive, and
what evidence (readings of the affected devices) is kept with each incident."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from gateway.config.base import Strict
from gateway.core.durations import Duration

# The key quantities of the shipped profiles (drivers/profiles/) and of the usual MQTT sensors: phase and
# single-phase voltage, currents, active power, frequency, water pressure, flow and tank level. Energy
# counters, power factors and line-to-line voltages add little to an outage's story and a lot of points.
DEFAULT_QUANTITIES = [
    "voltage",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current*",
    "power",
    "power_total",
    "power_l1",
    "power_l2",
    "power_l3",
    "active_power*",
    "frequency",
    "pressure",
    "flow",
    "level",
]

_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+$")


class EvidenceConfig(Strict):
    """Readings kept with an incident so its report never needs the time-series database."""

    before: Duration = Field(
        default=900.0,
        ge=0,
        le=86400,
        description="how far before an incident's first evidence its devices' readings are kept (each "
        "device's readings of this long are held in memory for it; a restart starts that memory empty)",
    )
    after: Duration = Field(
        default=900.0,
        ge=0,
        le=86400,
        description="how long after an incident resolves its devices' readings are still kept with it",
    )
    quantities: list[str] = Field(
        default_factory=lambda: list(DEFAULT_QUANTITIES),
        description="the quantities kept, by name or shell-style pattern (current*); empty: no evidence. "
        "Default: " + ", ".join(DEFAULT_QUANTITIES),
    )
    max_points: int = Field(
        default=20000,
        ge=100,
        le=1_000_000,
        description="most readings (one quantity at one instant) kept per incident; past it the incident's "
        "readings are thinned evenly to a lower rate, and the thinned ones are counted",
    )

    @field_validator("quantities")
    @classmethod
    def _quantities(cls, v: list[str]) -> list[str]:
        bad = [q for q in v if not _PATTERN.match(q)]
        if bad:
            raise ValueError(
                "expected quantity names or patterns such as voltage_l1 or current*, got "
                + ", ".join(map(repr, bad))
            )
        return v


class IncidentsConfig(Strict):
    """The incident store (SQLite): incidents, alert states, rule state and the append-only timeline."""

    path: Path | None = Field(
        default=None,
        description="SQLite file; default <state_dir>/incidents.sqlite, relative to the site file",
    )
    heartbeat: Duration = Field(
        default=10.0,
        gt=0,
        le=300,
        description="how often the store records that the gateway is alive; after a crash the downtime "
        "written to open incidents starts at the last heartbeat, so it is accurate to this much",
    )
    evidence: EvidenceConfig = Field(
        default_factory=EvidenceConfig,
        description="the affected devices' readings kept with each incident, from before it until after it "
        "resolves",
    )
