"""What the fleet tests share: a real mosquitto (tests/fixtures/mosquitto.py, with persistence, so it can be
stopped and started again on its port), a subscriber standing in for the fleet view, and the live site
(bench/rules_live.py: simulated meters over Modbus TCP, the real daemon) with a `fleet:` section.

FleetDaemon builds the runtime as the daemon does and keeps a handle on the fleet bridge detect.build made
(the daemon starts its publisher; the tests read its outbox and counters).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.app import detect
from gateway.app.daemon import build_runtime
from gateway.app.fleet import Fleet
from gateway.config import load_site
from simulators.runner import SimulatorThread
from tests.fixtures.mosquitto import Mosquitto, mosquitto, mosquitto_tls, mosquitto_with_users  # noqa: F401
from tests.fixtures.receiver import receiver, receiver_factory  # noqa: F401
from tests.helpers import free_port, wait_until

COMPANY = "acme"
GATEWAY = "gw-a"
TOKEN_ENV, TOKEN = "MW_TEST_FLEET_TOKEN", "fleet-test-token-8d1e"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A fleet view for tests: everything under meterwatch/# at QoS 1, on a persistent session (so what is
    published while it is away, e.g. during a broker restart, is kept for it by the broker)."""

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str = "fleet-view-test",
        persistent: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.ca_file is not None:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe("meterwatch/#", qos=1)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if persistent else 0
        self.client.connect(
            broker.host, broker.port, keepalive=10, clean_start=not persistent, properties=props
        )
        self.client.loop_start()

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def all(self, topic_part: str = "") -> list[Message]:
        with self._lock:
            return [m for m in self.messages if topic_part in m.topic]

    def events(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.all(f"/events/{GATEWAY}")]

    def transitions(self, incident_id: int | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e["type"] == "incident" and (incident_id is None or e["incident"]["id"] == incident_id)
        ]

    def latest(self, topic: str) -> Message | None:
        found = [m for m in self.all() if m.topic == topic]
        return found[-1] if found else None

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        return wait_until(predicate, timeout, 0.05, what)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def id_counts(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["id"] for e in events)


@pytest.fixture
def subscriber_factory(mosquitto: Mosquitto) -> Iterator[Callable[..., Subscriber]]:  # noqa: F811
    made: list[Subscriber] = []

    def make(**kw: Any) -> Subscriber:
        s = Subscriber(mosquitto, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


class FleetDaemon(DaemonThread):
    """The daemon as gateway/app/daemon.py builds it, with a handle on its fleet bridge for the tests."""

    fleet: Fleet | None = None

    async def setup(self) -> None:
        real = detect.build
        made: list[detect.Detection] = []

        def build(*args: Any, **kw: Any) -> detect.Detection:
            d = real(*args, **kw)
            made.append(d)
            return d

        detect.build = build  # type: ignore[assignment]
        try:
            self.rt = build_runtime(self.site, self.state_dir)
        finally:
            detect.build = real  # type: ignore[assignment]
        self.fleet = made[0].fleet
        assert self.fleet is not None, "the site has a fleet section"
        assert self.fleet.publisher in self.rt.components, "the daemon starts the fleet publisher"


class FleetSite(LiveSite):
    def __init__(self, directory: Path, site_path: Path) -> None:
        self.directory = directory
        self.site_path = site_path
        self.site = load_site(site_path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon: FleetDaemon = FleetDaemon(self.site, directory / "state")

    @property
    def fleet(self) -> Fleet:
        assert self.daemon.fleet is not None
        return self.daemon.fleet

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """The daemon's HTTP API with the desk's token: GET `path`, or POST `body` to it as JSON."""
        req = urllib.request.Request(
            self.daemon.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


FLEET = """
fleet:
  company: {company}
  broker: mqtt://{host}:{port}
  gateway: {gateway}
  keepalive: 5
  heartbeat: 1s
  reconnect_max: 1s
  buffer: {buffer}
"""

NOTIFY = """
notify:
  confirm_delay: {{power_outage: 1h}}
  verify_for: 1s
  retry_max: 1s
  channels:
    - {{name: staff, url: "{staff}", audiences: [staff], language: zh}}
"""


def fleet_site(
    directory: Path, broker: Mosquitto, staff_url: str | None = None, buffer: int = 100_000
) -> FleetSite:
    extra = FLEET.format(company=COMPANY, host=broker.host, port=broker.port, gateway=GATEWAY, buffer=buffer)
    if staff_url is not None:
        extra += NOTIFY.format(staff=staff_url)
    path = write_live_site(directory, http_port=free_port(), extra=extra)
    token = f"tokens: [{{name: desk, token: '${{{TOKEN_ENV}}}'}}]"
    text, n = re.subn(r"^http: \{(.*)\}$", rf"http: {{\1, {token}}}", path.read_text("utf-8"), flags=re.M)
    assert n == 1, "the live site's http line changed"
    path.write_text(text, encoding="utf-8")
    return FleetSite(directory, path)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def topic(kind: str, *rest: object) -> str:
    return "/".join(["meterwatch", COMPANY, "livetest", kind, GATEWAY, *(str(r) for r in rest)])
