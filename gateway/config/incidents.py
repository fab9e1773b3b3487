"""The site file's `incidents:` section: where incidents are kept, how often the gateway says it is alive."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gateway.config.base import Strict
from gateway.core.durations import Duration


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
