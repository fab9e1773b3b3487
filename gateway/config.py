"""The site file: one YAML per site, validated by pydantic, errors named by file:line and field path.

Topology (issue: Detect) lives here too: site -> buildings -> supply domains -> lines -> devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.mqtt.settings import subscription_problems
from drivers.profile import Profile, builtin_profiles, load_profile_file
from gateway.core.durations import Duration
from gateway.incidents.settings import IncidentsConfig
from gateway.sink.settings import HttpConfig, InfluxConfig, SpoolConfig
from gateway.yamlsrc import LoadedYaml, Loc, YamlSyntaxError, load
from rules.spec import RULE_KINDS, Detection, GatewaySection, RuleSpec
from rules.spec import cross_check as rules_cross_check

Id = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", min_length=1, max_length=64)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class Line(Strict):
    """One physical Modbus line or endpoint. One actor owns it; RTU lines carry one request at a time."""

    id: str = Id
    transport: Literal["tcp", "rtu", "rtu_over_tcp"]
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    device: str | None = Field(default=None, description="serial port for rtu, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    timeout: Duration = Field(default=1.0, gt=0, description="per request")
    retries: int = Field(default=0, ge=0, le=5, description="extra attempts of a failed request")
    inter_request_delay: Duration = Field(default=0.0, description="pause between requests on this line")
    max_connections: int = Field(default=1, ge=1, le=32, description="TCP only: parallel connections allowed")
    down_after: int = Field(
        default=3, ge=1, le=100, description="failed cycles before a device is marked down"
    )
    backoff_max: Duration = Field(
        default=300.0, gt=0, description="cap of the re-probe backoff of a down device"
    )
    powered_by: str | None = Field(default=None, description="supply domain powering the converter/gateway")

    @model_validator(mode="after")
    def _endpoint(self) -> Line:
        if self.transport in ("tcp", "rtu_over_tcp"):
            if not self.host or self.port is None:
                raise ValueError(f"a {self.transport} line needs host and port")
        elif not self.device:
            raise ValueError("an rtu line needs device (the serial port, e.g. /dev/ttyUSB0)")
        if self.transport != "tcp" and self.max_connections != 1:
            raise ValueError(
                "max_connections applies to tcp lines only: an RTU line carries one request at a time"
            )
        return self


Role = Literal["main_power", "unit_power", "zone_pressure", "pump", "tank", "flow", "other"]


class Device(Strict):
    id: str = Id
    name: str = ""
    building: str
    domain: str | None = Field(default=None, description="supply domain this device measures")
    role: Role = "other"
    households: int = Field(default=0, ge=0, description="households served by what this device measures")
    line_powered: bool = Field(
        default=False, description="powered by the circuit it measures (goes silent with it)"
    )
    powered_by: str | None = Field(
        default=None, description="supply domain powering the device, if not its own"
    )
    nominal_voltage: float = Field(default=220.0, gt=0, description="phase voltage Un for power rules")
    source: Literal["modbus", "mqtt"] = "modbus"
    # Modbus
    line: str | None = None
    unit: int | None = Field(default=None, ge=0, le=247, description="Modbus unit (slave) id")
    profile: str | None = None
    poll_interval: Duration = Field(default=1.0, gt=0)
    quantities: list[str] | None = Field(
        default=None, description="poll only these quantities of the profile"
    )
    max_registers_per_read: int | None = Field(default=None, ge=1, le=125)
    max_gap: int | None = Field(
        default=None, ge=0, le=124, description="unused registers a merged read may span"
    )
    one_read_per_value: bool = False
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


class MqttTls(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(default=False, description="skip certificate host name checks (test benches only)")


class MqttSubscription(Strict):
    topic: str = Field(
        description="topic filter or template: sensors/{building}/{device}/{quantity}; + and # allowed"
    )
    format: Literal["number", "json", "tasmota", "shelly"] = "number"
    device: str | None = Field(default=None, description="fixed device id when the topic does not name it")
    quantity: str | None = Field(default=None, description="fixed quantity for format number")
    fields: dict[str, str] = Field(
        default_factory=dict, description="json: quantity -> field path in the payload, e.g. data.pressure"
    )
    device_field: str | None = Field(default=None, description="json: field path holding the device id")
    time_field: str | None = Field(default=None, description="json: field path of an epoch or ISO timestamp")
    qos: Literal[0, 1, 2] | None = None

    @model_validator(mode="after")
    def _check(self) -> MqttSubscription:
        problems = subscription_problems(
            self.topic,
            self.format,
            self.device,
            self.quantity,
            self.fields,
            self.device_field,
            self.time_field,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MqttConfig(Strict):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, description="default: meterwatch-<site id>")
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTls | None = None
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(default=30, ge=5, le=3600)
    reconnect_max: Duration = Field(default=30.0, gt=0, le=30.0)
    clean_start: bool = Field(default=False, description="False keeps a persistent session across restarts")
    silence_timeout: Duration = Field(default=120.0, gt=0, description="reconnect when connected but silent")
    subscriptions: list[MqttSubscription] = Field(default_factory=list)


class SiteConfig(Strict):
    site: SiteInfo
    buildings: list[Building] = Field(min_length=1)
    lines: list[Line] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    mqtt: MqttConfig | None = None
    profiles_dir: Path | None = Field(
        default=None, description="extra profile files, relative to the site file"
    )
    influx: InfluxConfig | None = Field(default=None, description="where samples are stored")
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    rules: list[RuleSpec] | None = Field(
        default=None, description="detection rules; merged into the default rule set by id"
    )
    detection: Detection = Field(default_factory=Detection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)


# ---------------------------------------------------------------------------------------------------------
# Loading, cross-references and error reporting


@dataclass(frozen=True)
class ConfigIssue:
    path: Path
    line: int | None
    loc: Loc
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        field = format_loc(self.loc)
        return f"{where}: {field}: {self.message}" if field else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class Site:
    """A validated site file plus what it refers to (profiles), ready for the runtime."""

    config: SiteConfig
    path: Path
    profiles: dict[str, Profile]

    def device(self, device_id: str) -> Device:
        for d in self.config.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def line(self, line_id: str) -> Line:
        for line in self.config.lines:
            if line.id == line_id:
                return line
        raise KeyError(line_id)

    def devices_on(self, line_id: str) -> list[Device]:
        return [d for d in self.config.devices if d.line == line_id]

    def domains(self) -> dict[str, tuple[Building, SupplyDomain]]:
        return {d.id: (b, d) for b in self.config.buildings for d in b.domains}


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling and the output of `meterwatch schema`)"
    if err["type"] == "missing":
        return "required field is missing"
    inp = err.get("input")
    if err["type"] not in ("missing",) and not isinstance(inp, dict | list) and inp is not None:
        msg += f", got {inp!r}"
    return msg


def load_site(path: str | Path, env: dict[str, str] | None = None) -> Site:
    """Validate a site file. Raises ConfigError listing every problem found."""
    p = Path(path)
    try:
        src = load(p, env)
    except YamlSyntaxError as exc:
        raise ConfigError([ConfigIssue(p, exc.line, (), exc.message)]) from None
    issues = [ConfigIssue(p, src.line_of(i.loc), i.loc, i.message) for i in src.issues]
    if not isinstance(src.data, dict):
        raise ConfigError(
            [*issues, ConfigIssue(p, 1, (), "expected a mapping with site, buildings, devices")]
        )
    try:
        cfg = SiteConfig.model_validate(src.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _strip_union_tags(tuple(err["loc"]))
            issues.append(ConfigIssue(p, src.line_of(loc), loc, _pydantic_message(err)))
        raise ConfigError(issues) from None
    profiles = dict(builtin_profiles())
    if cfg.profiles_dir is not None:
        extra_dir = (p.parent / cfg.profiles_dir).resolve()
        for f in sorted(extra_dir.glob("*.yaml")):
            try:
                prof = load_profile_file(f)
            except (ValidationError, OSError, ValueError) as exc:
                issues.append(ConfigIssue(f, None, (), f"invalid profile: {exc}"))
                continue
            profiles[prof.name] = prof
    issues.extend(_cross_check(cfg, src, profiles))
    if issues:
        raise ConfigError(issues)
    return Site(config=cfg, path=p, profiles=profiles)


def _strip_union_tags(loc: Loc) -> Loc:
    # pydantic inserts the union member name (e.g. "function-after[...]") into loc; the user never wrote it.
    return tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in _UNION_TAGS)))


_UNION_TAGS = frozenset({"str", "int", "float", *RULE_KINDS})


def _cross_check(cfg: SiteConfig, src: LoadedYaml, profiles: dict[str, Profile]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def add(loc: Loc, msg: str) -> None:
        issues.append(ConfigIssue(src.path, src.line_of(loc), loc, msg))

    def unique(kind: str, items: list[tuple[Loc, str]]) -> set[str]:
        seen: set[str] = set()
        for loc, ident in items:
            if ident in seen:
                add(loc, f"duplicate {kind} id {ident!r}")
            seen.add(ident)
        return seen

    buildings = unique("building", [(("buildings", i, "id"), b.id) for i, b in enumerate(cfg.buildings)])
    domains = unique(
        "supply domain",
        [
            (("buildings", i, "domains", j, "id"), d.id)
            for i, b in enumerate(cfg.buildings)
            for j, d in enumerate(b.domains)
        ],
    )
    lines = unique("line", [(("lines", i, "id"), ln.id) for i, ln in enumerate(cfg.lines)])
    unique("device", [(("devices", i, "id"), d.id) for i, d in enumerate(cfg.devices)])

    for i, b in enumerate(cfg.buildings):
        for j, dom in enumerate(b.domains):
            if dom.parent is not None and dom.parent not in domains:
                add(("buildings", i, "domains", j, "parent"), f"unknown supply domain {dom.parent!r}")
    for i, ln in enumerate(cfg.lines):
        if ln.powered_by is not None and ln.powered_by not in domains:
            add(
                ("lines", i, "powered_by"),
                f"unknown supply domain {ln.powered_by!r}; known: {sorted(domains)}",
            )

    units_on_line: dict[tuple[str, int], str] = {}
    for i, d in enumerate(cfg.devices):
        if d.building not in buildings:
            add(("devices", i, "building"), f"unknown building {d.building!r}; known: {sorted(buildings)}")
        for key in ("domain", "powered_by"):
            ref = getattr(d, key)
            if ref is not None and ref not in domains:
                add(("devices", i, key), f"unknown supply domain {ref!r}; known: {sorted(domains)}")
        if d.line_powered and d.domain is None:
            add(("devices", i, "line_powered"), "line_powered needs domain (the circuit it measures)")
        if d.source != "modbus":
            continue
        if d.line not in lines:
            add(("devices", i, "line"), f"unknown line {d.line!r}; known: {sorted(lines)}")
        if d.profile not in profiles:
            add(("devices", i, "profile"), f"unknown profile {d.profile!r}; known: {sorted(profiles)}")
            continue
        prof = profiles[d.profile] if d.profile else None
        if prof is not None and d.quantities:
            for k, q in enumerate(d.quantities):
                if q not in prof.quantities:
                    add(("devices", i, "quantities", k), f"profile {prof.name} has no quantity {q!r}")
            selected = [p for p in prof.points if p.quantity in d.quantities]
            if selected and all(p.info for p in selected):
                # info points are read when the device comes up, not polled: they cannot tell it is alive
                add(("devices", i, "quantities"), "lists only info points (device information), no reading")
        unit = d.unit if d.unit is not None else (prof.default_unit if prof else 1)
        if d.line is not None:
            other = units_on_line.get((d.line, unit))
            if other is not None:
                add(("devices", i, "unit"), f"unit {unit} on line {d.line} is already used by device {other}")
            units_on_line[(d.line, unit)] = d.id
    for loc, msg in rules_cross_check(cfg):
        add(loc, msg)
    mqtt_devices = {d.id for d in cfg.devices if d.source == "mqtt"}
    for i, sub in enumerate(cfg.mqtt.subscriptions if cfg.mqtt else []):
        if sub.device is not None and sub.device not in mqtt_devices:
            add(("mqtt", "subscriptions", i, "device"), f"{sub.device!r} is not a device with source: mqtt")
    return issues


def json_schema() -> dict[str, Any]:
    schema = SiteConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "meterwatch site file"
    return schema
