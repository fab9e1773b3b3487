"""What the daemon's parts share once built, each under its own type (no lookups by name)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter

from drivers.modbus.line import LineActor
from drivers.mqtt.subscriber import MqttSubscriber
from gateway.core.stats import DeviceStats
from gateway.fleet.commands import FleetCommands
from gateway.fleet.publisher import FleetPublisher
from gateway.incidents.evidence import EvidenceKeeper
from gateway.incidents.manager import IncidentManager
from gateway.incidents.retention import Retention
from gateway.observe.health import Readiness
from gateway.observe.http import HttpServer
from gateway.observe.metrics import Exported
from gateway.observe.presence import DevicePresence
from gateway.respond.desk import DaemonDesk
from gateway.respond.responder import Responder
from gateway.sink.forwarder import Forwarder


@dataclass
class Services:
    presence: DevicePresence
    readiness: Readiness
    sink: Forwarder | None = None
    incidents: IncidentManager | None = None
    responder: Responder | None = None
    desk: DaemonDesk | None = None
    evidence: EvidenceKeeper | None = None
    retention: Retention | None = None
    lines: list[LineActor] = field(default_factory=list)
    mqtt: MqttSubscriber | None = None
    routers: list[APIRouter] = field(default_factory=list)
    http: HttpServer | None = None
    fleet: FleetPublisher | None = None  # the fleet bridge's publisher; its counters: fleet.stats
    fleet_commands: FleetCommands | None = None  # fleet.commands enabled; its counters: fleet_commands.stats

    @property
    def http_port(self) -> int | None:
        """The port the HTTP server listens on, once it does."""
        return None if self.http is None else self.http.bound_port

    def device_stats(self) -> dict[str, DeviceStats]:
        """The Modbus devices' stats, by device id."""
        return {d: s for a in self.lines for d, s in a.device_stats.items()}

    def exported(self) -> Exported:
        """The stats /metrics reads, taken from the parts that keep them."""
        return Exported(
            lines={a.line.id: a.stats for a in self.lines},
            devices=self.device_stats(),
            mqtt=[] if self.mqtt is None else [self.mqtt.stats],
            sink=self.sink,
            incidents=self.incidents,
            presence=self.presence,
            channels={} if self.responder is None else self.responder.sender.stats(),
            outbox=None if self.responder is None else self.responder.outbox,
            evidence=self.evidence,
            retention=self.retention,
            incident_store=None if self.incidents is None else self.incidents.store.path,
            fleet=None if self.fleet is None else self.fleet.stats,
            fleet_commands=None if self.fleet_commands is None else self.fleet_commands.stats,
        )
