"""The `site:` and `buildings:` sections: the site and what fails together (buildings, supply domains)."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from gateway.config.base import Id, Strict


class SiteInfo(Strict):
    id: Annotated[str, Id] = Field(
        description="short id of the site: names its state directory (var/<id>) and its MQTT client id"
    )
    name: str = Field(default="", description="display name of the site")
    timezone: str = Field(default="UTC", description="IANA time zone of the site, e.g. Asia/Shanghai")
    nominal_voltage: float = Field(
        default=220.0,
        gt=0,
        description="phase voltage Un of the site's supply (220 in China, 230 in Europe); a device may say "
        "otherwise",
    )

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

    id: Annotated[str, Id] = Field(
        description="domain id, unique across the site; devices and lines name it in domain and powered_by"
    )
    kind: Literal["power", "water"] = Field(description="what the domain supplies: power or water")
    name: str = Field(default="", description="display name, e.g. transformer T1 or riser 2")
    households: int | None = Field(
        default=None, ge=0, description="households served; default: the building's"
    )
    parent: str | None = Field(
        default=None, description="upstream domain id (e.g. the transformer of a feeder)"
    )


class Building(Strict):
    id: Annotated[str, Id] = Field(description="building id; devices name it in building")
    name: str = Field(default="", description="display name of the building")
    households: int = Field(default=0, ge=0, description="households in the building (counted in incidents)")
    domains: list[SupplyDomain] = Field(
        default_factory=list, description="the building's supply domains: power feeders, water zones"
    )
