"""The publisher on its own (no daemon): the bridge's rounds written to a real incident store as the detector
writes them, a real mosquitto. An outage longer than fleet.buffer drops the oldest events and counts them,
and delivers the newest `buffer` in order on return; TLS (mqtts:// with the site's CA file) and a broker
user whose password comes from ${ENV} work."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_site
from gateway.fleet.bridge import FleetBridge
from gateway.fleet.publisher import FleetPublisher
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch, IncidentStore
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import Subscriber
from tests.helpers import wait_until

SITE = """\
site: {{id: pub, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 10, domains: [{{id: B1-power, kind: power}}]}}
fleet:
  company: acme
  broker: {scheme}://{host}:{port}
  gateway: gw-p
  buffer: 100
  reconnect_max: 1s
{extra}
"""
EVENTS = "meterwatch/acme/pub/events/gw-p"


class Gateway:
    """The bridge and publisher over a real incident store, fed rounds as the detector would."""

    def __init__(self, directory: Path, broker: Mosquitto, scheme: str = "mqtt", extra: str = "") -> None:
        path = directory / "site.yaml"
        path.write_text(
            SITE.format(scheme=scheme, host=broker.host, port=broker.port, extra=extra), encoding="utf-8"
        )
        self.site = load_site(path)
        assert self.site.config.fleet is not None
        self.store_path = directory / "incidents.sqlite"
        self.store = IncidentStore(self.store_path)
        mgr = IncidentManager.open(self.site, self.store, time.time())
        self.bridge = FleetBridge(self.site, self.site.config.fleet, mgr, self.store_path, time.time())
        self.publisher = FleetPublisher(self.site, self.site.config.fleet, self.bridge, dict, "test")
        first = Batch()  # the detector's first round: no open incident, no snapshot owed
        self.bridge.on_batch(first, time.time())
        self.store.write(first)
        now = time.time()
        self.incident = Incident(
            id=1, key="power_outage/building:B1", category="power_outage", scope="building:B1",
            title="power outage", severity="critical", event_code="003", audiences=["staff"],
            households=10, state=IncidentState.FIRING, opened_at=now, first_evidence_at=now,
            updated_at=now,
        )  # fmt: skip

    def note(self, n: int) -> None:
        """One round with one transition (a staff note `n`), committed."""
        t = time.time()
        batch = Batch(
            incidents={1: self.incident}, timeline=[IncidentChange(t, 1, IncidentEvent.NOTE, False, f"n{n}")]
        )
        self.bridge.on_batch(batch, t)
        self.store.write(batch)
        self.publisher.wake()


def rows_in(gw: Gateway) -> int:
    """Rows in the outbox now, read on a connection of the test's own."""
    db = sqlite3.connect(gw.store_path, timeout=30.0)
    try:
        return int(db.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def gateway_factory() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for g in made:
        g.publisher.stop(5.0)


def test_an_outage_past_the_buffer_drops_the_oldest_and_counts_them(
    tmp_path: Path, mosquitto: Mosquitto, gateway_factory: list[Gateway]
) -> None:
    sub = Subscriber(mosquitto)
    try:
        gw = Gateway(tmp_path, mosquitto)
        gateway_factory.append(gw)
        gw.publisher.start()
        stats = gw.publisher.stats
        wait_until(lambda: stats.connected, 30, 0.05, "connected")
        assert stats.window == 18  # mosquitto's Receive Maximum (20) less the state's and KPIs' places
        gw.note(0)
        sub.wait(lambda: [m for m in sub.all(EVENTS)], "the first note")
        wait_until(lambda: stats.acked == 2 and rows_in(gw) == 0, 30, 0.05, "the first note acknowledged")
        mosquitto.stop()
        wait_until(lambda: not stats.connected, 30, 0.05, "the broker gone")
        for n in range(1, 81):  # 80 rounds, 160 rows (each note: the event and the retained state)
            gw.note(n)
        mosquitto.start()
        wait_until(lambda: stats.connected and stats.pending == 0, 60, 0.05, "the outbox drained")
        notes = sub.wait(
            lambda: (got := [m.json()["detail"] for m in sub.all(EVENTS)]) and got[-1] == "n80" and got,
            "the last note",
        )
        wait_until(lambda: stats.dropped == 60, 10, 0.05, f"60 rows dropped and counted, not {stats.dropped}")
        # 100 rows kept: the newest 50 rounds' event and state; the 30 oldest rounds of the outage are gone
        assert notes == ["n0", *(f"n{n}" for n in range(31, 81))]
    finally:
        sub.close()


def test_tls_with_the_sites_ca_file(
    tmp_path: Path, mosquitto_tls: Mosquitto, gateway_factory: list[Gateway]
) -> None:
    assert mosquitto_tls.ca_file is not None
    sub = Subscriber(mosquitto_tls)
    try:
        gw = Gateway(tmp_path, mosquitto_tls, "mqtts", f"  tls: {{ca_file: {mosquitto_tls.ca_file}}}")
        gateway_factory.append(gw)
        gw.publisher.start()
        gw.note(1)
        sub.wait(lambda: [m for m in sub.all(EVENTS) if m.json()["detail"] == "n1"], "a note over TLS")
    finally:
        sub.close()


def test_a_broker_user_with_the_password_from_env(
    tmp_path: Path,
    mosquitto_with_users: Mosquitto,
    gateway_factory: list[Gateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_TEST_PW", "s3cret-pw")
    sub = Subscriber(mosquitto_with_users, username="gateway", password="s3cret-pw")
    try:
        gw = Gateway(
            tmp_path, mosquitto_with_users, extra="  username: gateway\n  password: ${FLEET_TEST_PW}"
        )
        gateway_factory.append(gw)
        gw.publisher.start()
        gw.note(1)
        sub.wait(lambda: [m for m in sub.all(EVENTS) if m.json()["detail"] == "n1"], "a note as user gateway")
    finally:
        sub.close()
