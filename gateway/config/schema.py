"""The whole site file: one model with a field per section (each section in its own module)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gateway.config.base import Strict
from gateway.config.detection import Detection, GatewaySection
from gateway.config.devices import Device
from gateway.config.fleet import FleetConfig
from gateway.config.http import HttpConfig
from gateway.config.incidents import IncidentsConfig
from gateway.config.modbus import Line
from gateway.config.mqtt import MqttConfig
from gateway.config.notify import NotifyConfig
from gateway.config.oncall import OncallConfig
from gateway.config.review import ReviewConfig
from gateway.config.rules import RuleSpec
from gateway.config.shard import ShardSpec
from gateway.config.site import Building, SiteInfo
from gateway.config.store import InfluxConfig, SpoolConfig


class SiteConfig(Strict):
    site: SiteInfo = Field(description="the site: id, name, time zone")
    buildings: list[Building] = Field(
        min_length=1, description="the buildings, each with its supply domains (what fails together)"
    )
    lines: list[Line] = Field(default_factory=list, description="the Modbus lines and endpoints polled")
    devices: list[Device] = Field(default_factory=list, description="every meter and sensor")
    mqtt: MqttConfig | None = Field(default=None, description="the MQTT broker; absent: no MQTT devices")
    profiles_dir: Path | None = Field(
        default=None, description="extra profile files, relative to the site file"
    )
    influx: InfluxConfig | None = Field(default=None, description="where samples are stored")
    spool: SpoolConfig = Field(
        default_factory=SpoolConfig, description="the durable buffer in front of InfluxDB"
    )
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="the HTTP server: /metrics, /healthz, /readyz, /api"
    )
    rules: list[RuleSpec] | None = Field(
        default=None, description="detection rules; merged into the default rule set by id"
    )
    detection: Detection = Field(default_factory=Detection, description="how alerts become incidents")
    gateway: GatewaySection = Field(default_factory=GatewaySection, description="the gateway itself")
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig, description="the incident store")
    notify: NotifyConfig = Field(
        default_factory=NotifyConfig, description="notices to residents, staff and utilities (apprise)"
    )
    oncall: OncallConfig = Field(
        default_factory=OncallConfig,
        description="the emergency team: on-call roster, dispatch and the escalation chain",
    )
    review: ReviewConfig = Field(
        default_factory=ReviewConfig,
        description="the targets incident reports and the monthly review measure against; retention",
    )
    fleet: FleetConfig | None = Field(
        default=None,
        description="the event bridge to the company's broker (docs/fleet-topics.md); absent: none",
    )
    shard: ShardSpec | None = Field(
        default=None,
        description="this gateway's buildings when several gateways share the site (a compound); absent: "
        "the whole site",
    )
