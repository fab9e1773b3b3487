"""The site file's `incidents:` section: where incidents are kept, how often the gateway says it is alive."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.durations import Duration


class IncidentsConfig(BaseModel):
    """The incident store (SQLite): incidents, alert states, rule state and the append-only timeline."""

    model_config = ConfigDict(extra="forbid")

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
