"""The `review:` section: the handbook's targets the reports measure against; how long records are kept."""

from __future__ import annotations

from pydantic import Field

from gateway.config.base import Strict
from gateway.core.durations import Duration


class ReviewConfig(Strict):
    """Targets of the incident reports and the monthly review (the handbooks' figures by default)."""

    inform_within: Duration = Field(
        default=900.0,
        gt=0,
        description="residents informed within this long of an outage's first evidence counts as in time",
    )
    inform_share: float = Field(
        default=0.9, ge=0, le=1, description="target share of outages whose residents were informed in time"
    )
    response_share: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="target share of dispatched incidents acknowledged within oncall.target (30 min)",
    )
    satisfaction: float = Field(
        default=0.85, ge=0, le=1, description="target share of satisfied votes after an all-clear"
    )
    drills_notify_residents: bool = Field(
        default=False, description="drills also send their (marked) notices to residents; off: staff only"
    )
    retention: Duration = Field(
        default=730 * 86400.0,
        gt=0,
        description="resolved incidents, their evidence, delivery logs and votes are kept this long "
        "(default 2 years)",
    )
