"""The `detection:` and `gateway:` sections: how alerts become incidents; the gateway's own mains sensing."""

from __future__ import annotations

from pydantic import Field

from gateway.config.base import Strict
from gateway.config.rules import OUTAGE_AUDIENCES, Severity
from gateway.core.durations import Duration


class Detection(Strict):
    """How alerts become incidents."""

    correlation_window: Duration = Field(
        default=60.0, description="a lone device fault waits this long for a root cause before it opens"
    )
    reopen_window: Duration = Field(
        default=1800.0, description="a recurrence within this reopens the incident"
    )
    outage_fraction: float = Field(
        default=0.6, gt=0, le=1, description="share of a power domain's devices dark for a domain outage"
    )
    outage_min_devices: int = Field(default=2, ge=1, description="and at least this many")
    line_min_devices: int = Field(default=2, ge=1, description="all of a line's devices silent: a line fault")
    flap_threshold: int = Field(default=3, ge=1, description="re-fires within flap_window that mark flapping")
    flap_window: Duration = Field(
        default=900.0, gt=0, description="re-fires are counted over this trailing span"
    )
    outage_severity: Severity = Field(
        default="critical", description="severity of a site or supply-domain power outage incident"
    )
    outage_audiences: list[str] = Field(
        default_factory=lambda: list(OUTAGE_AUDIENCES),
        description="who a site or supply-domain power outage concerns; default staff, residents, utility",
    )


class MainsSensor(Strict):
    device: str = Field(description="device that measures the supply of the gateway itself (a devices[].id)")
    quantity: str = Field(default="voltage_l1", description="quantity of that device to watch")
    below: float = Field(default=22.0, description="mains is lost below this value")


class GatewaySection(Strict):
    mains: MainsSensor | None = Field(default=None, description="optional sensing of the gateway's own mains")
