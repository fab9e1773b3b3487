"""Nothing owed to the fleet is lost (issue 13, item 1): the broker stopped while incidents change, and the
gateway itself stopped with events still owed. The test subscriber (a persistent session, as a fleet view
would keep) dedupes by the event id and must then hold every transition of the incident store's timeline
exactly once; raw redeliveries (a message in flight at a cut) carry the same id, never a new one.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from bench.rules_live import open_incidents
from gateway.app.detect import store_path
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import GATEWAY, FleetSite, Subscriber, fleet_site
from tests.helpers import wait_until

TIMEOUT = 60.0  # generous: a time-out says an event never came, it is no speed claim


def timeline(site: FleetSite) -> Counter[tuple[int, str, float]]:
    """Every incident transition the store holds (the gateway's own start records are not fleet events)."""
    db = sqlite3.connect(store_path(site.site, site.directory / "state"), timeout=30.0)
    try:
        rows = db.execute(
            "SELECT incident_id, event, ts FROM timeline WHERE event != 'gateway_down'"
        ).fetchall()
    finally:
        db.close()
    return Counter((int(i), str(e), float(t)) for i, e, t in rows)


def received(sub: Subscriber) -> Counter[tuple[int, str, float]]:
    """The transitions the subscriber got, each id counted once."""
    by_id: dict[str, dict[str, Any]] = {}
    for e in sub.transitions():
        seen = by_id.setdefault(e["id"], e)
        assert seen == e, f"two different events under one id {e['id']}"
    return Counter((e["incident"]["id"], e["transition"], e["at"]) for e in by_id.values())


def incident_in(site: FleetSite, building: str) -> dict[str, Any]:
    return wait_until(
        lambda: next(
            (i for i in open_incidents(site.daemon) if i["scope"] == f"domain:{building}-power"), None
        ),
        TIMEOUT,
        0.05,
        f"{building}'s incident open in the API",
    )


def pending(site: FleetSite) -> int:
    db = sqlite3.connect(store_path(site.site, site.directory / "state"), timeout=30.0)
    try:
        return int(db.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0])
    finally:
        db.close()


def test_broker_stopped_while_incidents_change_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, subscriber_factory: Any
) -> None:
    sub = subscriber_factory()
    site = fleet_site(tmp_path, mosquitto)
    with site:
        stats = site.fleet.publisher.stats
        world = site.sim.world
        world.cut_power("B1")
        b1 = incident_in(site, "B1")
        sub.wait(lambda: [e for e in sub.transitions(b1["id"]) if e["transition"] == "opened"], "B1 opened")

        mosquitto.stop()
        wait_until(lambda: not stats.connected, TIMEOUT, 0.05, "the publisher sees the broker gone")
        world.restore_power("B1")
        wait_until(
            lambda: not [i for i in open_incidents(site.daemon) if i["id"] == b1["id"]],
            TIMEOUT,
            0.05,
            "B1 resolved while the broker is down",
        )
        world.cut_power("B2")
        b2 = incident_in(site, "B2")
        # the outbox holds what the broker could not take
        wait_until(lambda: pending(site) > 0, TIMEOUT, 0.05, "events kept in the outbox")
        kept = pending(site)

        mosquitto.start()
        sub.wait(lambda: [e for e in sub.transitions(b2["id"]) if e["transition"] == "opened"], "B2 opened")
        wait_until(lambda: stats.connected and pending(site) == 0, TIMEOUT, 0.05, "the outbox drained")
        want = timeline(site)
        sub.wait(lambda: received(sub) == want, "every transition of the store at the subscriber")
        assert kept > 0 and stats.acked >= kept
        resolved = [e for e in sub.transitions(b1["id"]) if e["transition"] == "resolved"]
        assert resolved and resolved[0]["incident"]["resolved_at"] is not None


def test_a_restarted_gateway_sends_what_was_not_acknowledged(
    tmp_path: Path, mosquitto: Mosquitto, subscriber_factory: Any
) -> None:
    sub = subscriber_factory()
    site = fleet_site(tmp_path, mosquitto)
    with site:
        sub.wait(lambda: sub.all("/gateway/"), "the gateway online")
        mosquitto.stop()
        wait_until(lambda: not site.fleet.publisher.stats.connected, TIMEOUT, 0.05, "broker gone")
        site.sim.world.cut_power("B1")
        b1 = incident_in(site, "B1")
        wait_until(lambda: pending(site) > 0, TIMEOUT, 0.05, "B1's events kept in the outbox")
    # the gateway is stopped with B1's events still owed; it starts again with the broker back
    owed_before = timeline(site)
    assert owed_before, "B1's transitions are in the store"
    mosquitto.start()
    again = FleetSite(site.directory, site.site_path)
    with again:
        sub.wait(lambda: [e for e in sub.transitions(b1["id"]) if e["transition"] == "opened"], "B1 opened")
        # the new life owes each open incident's retained state once more, with its first round
        sub.wait(
            lambda: [
                m
                for m in sub.all(f"/incident/{GATEWAY}/{b1['id']}")
                if b'"transition":"snapshot"' in m.payload
            ],
            "B1's state again after the restart",
        )
        wait_until(lambda: pending(again) == 0, TIMEOUT, 0.05, "the outbox drained")
        want = timeline(again)
        sub.wait(lambda: received(sub) == want, "every transition of the store at the subscriber")
        assert owed_before - received(sub) == Counter(), "a transition owed before the restart is missing"
