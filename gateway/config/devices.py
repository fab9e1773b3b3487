"""The `devices:` section: every meter and sensor, where it is, what it measures, how it is read."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.config.base import Id, Strict
from gateway.core.durations import Duration


class Role(StrEnum):
    """What a device is to the detection rules (rules match devices by role)."""

    MAIN_POWER = "main_power"
    UNIT_POWER = "unit_power"
    ZONE_PRESSURE = "zone_pressure"
    PUMP = "pump"
    TANK = "tank"
    FLOW = "flow"
    OTHER = "other"


class Device(Strict):
    id: Annotated[str, Id] = Field(description="device id, unique across the site; rules and topics name it")
    name: str = Field(default="", description="display name of the device")
    building: str = Field(description="building it is in (a buildings[].id)")
    domain: str | None = Field(default=None, description="supply domain this device measures")
    role: Role = Field(
        default=Role.OTHER, description="what it is to the rules (rules match devices by role)"
    )
    households: int = Field(default=0, ge=0, description="households served by what this device measures")
    line_powered: bool = Field(
        default=False, description="powered by the circuit it measures (goes silent with it)"
    )
    powered_by: str | None = Field(
        default=None, description="supply domain powering the device, if not its own"
    )
    nominal_voltage: float | None = Field(
        default=None, gt=0, description="phase voltage Un for power rules; default site.nominal_voltage"
    )
    phase: Literal["L1", "L2", "L3"] | None = Field(
        default=None,
        description="the phase of its domain's supply a single-phase device is fed from; a line-powered "
        "device that goes silent while its main meter has lost this phase is a symptom of that phase loss "
        "(without it: when it goes silent within the correlation window of a phase loss in its domain)",
    )
    source: Literal["modbus", "mqtt"] = Field(
        default="modbus", description="modbus: polled on a line; mqtt: read from the broker's messages"
    )
    # Modbus
    line: str | None = Field(default=None, description="Modbus line it is on (a lines[].id); modbus only")
    unit: int | None = Field(default=None, ge=0, le=247, description="Modbus unit (slave) id")
    profile: str | None = Field(
        default=None, description="register map: a shipped profile (e.g. sdm630) or one in profiles_dir"
    )
    poll_interval: Duration = Field(default=1.0, gt=0, description="how often the device is polled")
    quantities: list[str] | None = Field(
        default=None, description="poll only these quantities of the profile"
    )
    max_registers_per_read: int | None = Field(
        default=None, ge=1, le=125, description="most registers in one request; default: the profile's"
    )
    max_gap: int | None = Field(
        default=None, ge=0, le=124, description="unused registers a merged read may span"
    )
    one_read_per_value: bool = Field(
        default=False, description="one request per value, no merging (a meter that rejects wider reads)"
    )
    # MQTT
    expected_interval: Duration | None = Field(default=None, gt=0, description="MQTT: how often it publishes")

    @model_validator(mode="after")
    def _source(self) -> Device:
        if self.source == "modbus":
            missing = [k for k in ("line", "profile") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a modbus device needs {' and '.join(missing)}")
        elif self.line is not None or self.unit is not None:
            raise ValueError("an mqtt device takes no line or unit")
        if self.powered_by is not None and self.line_powered:
            raise ValueError("give line_powered or powered_by, not both")
        return self

    @property
    def power_domain(self) -> str | None:
        """The supply domain whose loss silences this device, if any."""
        return self.powered_by or (self.domain if self.line_powered else None)
