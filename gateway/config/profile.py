"""Device profiles: a meter model's register map as data (devices are data, not code).

The poller and the simulators read the same profile files (drivers/profiles/*.yaml). A point is described
in datasheet terms: where it lives (function + 0-based PDU address, or PLC notation such as 30001, or the
manual's 1-based register number), how it is encoded (type, byte order and word order stated separately),
and how the raw number becomes an engineering value (scale, offset, or a decimals register).

Two kinds of point: readings (polled every cycle, published as Sample values) and device information
(`info: true`, and every `string`: serial number, firmware version), read when the device comes up and then
at most every info refresh, published as DeviceInfo text. `not_available` lists raw values by which a meter
says "no reading" (e.g. 0xFFFF): such a read is dropped and counted, never published as a number.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Function = Literal["coil", "discrete", "holding", "input"]
DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bit", "string"
]
Order = Literal["big", "little"]
Encoding = Literal["ascii", "latin-1"]

REGISTER_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bit": 1,
}  # fmt: skip
PLC_FUNCTION: dict[int, Function] = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}
# The profile files are data of the drivers package; their format is config, so the model lives here.
PROFILE_DIR = Path(__file__).resolve().parents[2] / "drivers" / "profiles"


class Point(BaseModel):
    """One value of a device. After validation `function` and `address` (0-based PDU) are always set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="common quantity name, e.g. voltage_l1")
    unit: str = Field(default="", description="engineering unit of the decoded value, e.g. V, A, W, kWh, bar")
    function: Function | None = Field(
        default=None, description="Modbus table: coil, discrete (input), holding or input (register)"
    )
    address: int | None = Field(default=None, ge=0, le=65535, description="0-based PDU address")
    ref: int | None = Field(
        default=None, description="PLC notation: 00001-09999 coil, 10001 discrete, 30001 input, 40001 holding"
    )
    reg: int | None = Field(
        default=None, ge=1, le=65536, description="1-based register number (manual REG n)"
    )
    type: DataType = Field(default="uint16", description="how the registers are decoded")
    byte_order: Order = Field(default="big", description="order of the two bytes inside each register")
    word_order: Order = Field(
        default="big", description="big: the high word is in the lower-numbered register"
    )
    count: int | None = Field(default=None, ge=1, le=125, description="registers of a string")
    encoding: Encoding = Field(
        default="ascii", description="string points: ascii (other bytes read as U+FFFD) or latin-1"
    )
    info: bool = Field(
        default=False,
        description="device information, not a reading: read when the device comes up and at most every "
        "info refresh, published as DeviceInfo text (always true for strings)",
    )
    not_available: tuple[int | float, ...] = Field(
        default=(),
        description="raw values meaning 'no reading' (e.g. 0xFFFF, .nan): compared before mask, shift and "
        "scale; integers match the raw value read unsigned or signed, floats the raw float (NaN any NaN)",
    )
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of a register, for type bit")
    mask: int | None = Field(
        default=None, ge=1, description="integer types: keep only these bits of the raw value (before shift)"
    )
    shift: int = Field(default=0, ge=0, le=63, description="integer types: right shift applied after mask")
    scale: float = Field(default=1.0, description="value = raw x scale + offset")
    offset: float = Field(default=0.0, description="added after scale")
    decimals_register: int | None = Field(
        default=None, ge=0, le=65535, description="PDU address (same function) holding the number of decimals"
    )
    description: str = Field(default="", description="free text, e.g. the manual's name of the value")

    @model_validator(mode="before")
    @classmethod
    def _resolve_address(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        given = [k for k in ("address", "ref", "reg") if data.get(k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of address (0-based PDU), ref (PLC notation) or reg (1-based)")
        data = dict(data)
        if data.get("type") == "string" and data.get("info") is None:
            data["info"] = True
        if "ref" in given:
            ref = int(data["ref"])
            digits = 6 if ref >= 100000 else 5
            kind, offset = divmod(ref, 10 ** (digits - 1))
            if kind not in PLC_FUNCTION or offset < 1:
                raise ValueError(f"ref {ref} is not PLC notation (00001, 10001, 30001 or 40001 ranges)")
            if data.get("function") not in (None, PLC_FUNCTION[kind]):
                raise ValueError(
                    f"ref {ref} is a {PLC_FUNCTION[kind]} address but function is {data['function']}"
                )
            data["function"] = PLC_FUNCTION[kind]
            data["address"] = offset - 1
        elif "reg" in given:
            data["address"] = int(data["reg"]) - 1
        return data

    @model_validator(mode="after")
    def _check(self) -> Point:
        if self.function is None:
            raise ValueError("function is missing (coil, discrete, holding or input) and no ref gives it")
        if self.type == "string" and self.count is None:
            raise ValueError("a string point needs count (registers)")
        if self.function in ("coil", "discrete") and self.type != "bit":
            raise ValueError(f"a {self.function} point must have type bit")
        if self.type == "bit" and self.function in ("holding", "input") and self.bit is None:
            raise ValueError("a bit point in a register needs bit (0-15)")
        if (self.mask is not None or self.shift) and not self.type.startswith(("int", "uint")):
            raise ValueError(f"mask and shift apply to integer types only, not {self.type}")
        if self.type == "string" and not self.info:
            raise ValueError("a string point is device information: it cannot have info: false")
        if self.not_available:
            self._check_not_available()
        return self

    def _check_not_available(self) -> None:
        if self.type in ("bit", "string"):
            raise ValueError(f"not_available applies to numeric types, not {self.type}")
        if self.type.startswith(("int", "uint")):
            bits = 16 * REGISTER_WIDTH[self.type]
            for v in self.not_available:
                if not isinstance(v, int) or not -(1 << (bits - 1)) <= v < 1 << bits:
                    raise ValueError(
                        f"not_available value {v!r} is not a raw {self.type} (an integer of {bits} bits)"
                    )

    @property
    def pdu(self) -> int:
        assert self.address is not None
        return self.address

    @property
    def width(self) -> int:
        """Registers (or bits, for coils and discrete inputs) this point occupies."""
        if self.function in ("coil", "discrete"):
            return 1
        if self.type == "string":
            assert self.count is not None
            return self.count
        return REGISTER_WIDTH[self.type]


class SerialDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    baudrate: int = Field(default=9600, description="the meter's factory serial speed, in bit/s")
    parity: Literal["N", "E", "O"] = Field(default="N", description="the meter's factory parity")
    stopbits: Literal[1, 2] = Field(default=1, description="the meter's factory stop bits")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="profile name; devices name it in profile")
    manufacturer: str = Field(description="maker of the meter, e.g. Eastron")
    model: str = Field(description="meter model, e.g. SDM630")
    kind: Literal["power", "pressure", "flow", "level", "other"] = Field(
        description="what the meter measures"
    )
    description: str = Field(default="", description="free text about the meter")
    serial: SerialDefaults = Field(
        default=SerialDefaults(),
        description="the meter's factory serial settings, for reference (a line sets its own)",
    )
    default_unit: int = Field(
        default=1, ge=1, le=247, description="Modbus unit id when the device does not give unit"
    )
    max_registers_per_read: int = Field(
        default=125, ge=1, le=125, description="most registers the meter answers in one request"
    )
    points: tuple[Point, ...] = Field(description="the values the meter holds")
    replaces_builtin: bool = Field(
        default=False,
        description="true: this profile (in profiles_dir) deliberately replaces the shipped one of the same "
        "name; without it a name clash is an error",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: object) -> object:
        # `defaults:` lets a profile state function/type/orders once instead of on every point.
        if isinstance(data, dict) and "defaults" in data:
            data = dict(data)
            defaults = data.pop("defaults") or {}
            data["points"] = [{**defaults, **p} if isinstance(p, dict) else p for p in data.get("points", [])]
        return data

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: set[str] = set()
        for p in self.points:
            if p.quantity in seen:
                raise ValueError(f"quantity {p.quantity} appears twice")
            seen.add(p.quantity)
        return self

    def point(self, quantity: str) -> Point:
        for p in self.points:
            if p.quantity == quantity:
                return p
        raise KeyError(quantity)

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(p.quantity for p in self.points)


def load_profile_file(path: Path) -> Profile:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return Profile.model_validate(data)


@cache
def builtin_profiles() -> dict[str, Profile]:
    """Every profile shipped under drivers/profiles, by name."""
    out: dict[str, Profile] = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        profile = load_profile_file(path)
        out[profile.name] = profile
    return out
