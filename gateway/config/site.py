"""The `site:` and `buildings:` sections: the site and what fails together (buildings, supply domains)."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from gateway.config.base import Id, Strict


class SiteInfo(Strict):
    id: str = Id
    name: str = ""
    timezone: str = Field(default="UTC", description="IANA time zone of the site, e.g. Asia/Shanghai")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"expected an IANA time zone such as Asia/Shanghai, got {v!r}") from exc
        return v


class SupplyDomain(Strict):
    """A power feeder/transformer or a water zone/riser: what fails together."""

    id: str = Id
    kind: Literal["power", "water"]
    name: str = ""
    households: int | None = Field(
        default=None, ge=0, description="households served; default: the building's"
    )
    parent: str | None = Field(
        default=None, description="upstream domain id (e.g. the transformer of a feeder)"
    )


class Building(Strict):
    id: str = Id
    name: str = ""
    households: int = Field(default=0, ge=0)
    domains: list[SupplyDomain] = Field(default_factory=list)
