"""The event bridge with the real daemon (simulated meters over Modbus TCP), a real mosquitto and a subscriber
standing in for the fleet view (issue 13, item 1): incidents opened, dispatched, acknowledged, on site and
resolved appear on their topics with the version-1 payloads; a notice sent is an event; a viewer started late
sees the retained gateway state and the open incidents only; a broker stopped and started again while events
happen loses none (each counted once by id); a daemon restarted sends what was not acknowledged.

Everything is waited for on the subscriber's messages or the daemon's API, never slept for.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.receiver import Receiver
from tests.gateway.fleet.conftest import (
    GATEWAY,
    TOKEN,
    FleetSite,
    Subscriber,
    fleet_site,
    id_counts,
    topic,
)

ONCALL = """
oncall:
  people: [{id: wang, name: Wang, phone: "13800000001"}]
  shifts: [{oncall: wang}]
"""
TIMEOUT = 60.0  # generous: a time-out says an event never came, it is no speed claim


def post(site: FleetSite, path: str) -> Any:
    req = urllib.request.Request(
        site.daemon.url + path,
        data=b"{}",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def with_oncall(site: FleetSite) -> FleetSite:
    site.site_path.write_text(site.site_path.read_text("utf-8") + ONCALL, encoding="utf-8")
    return FleetSite(site.directory, site.site_path)


def opened(sub: Subscriber, building: str) -> dict[str, Any]:
    found = sub.wait(
        lambda: [
            e
            for e in sub.transitions()
            if e["transition"] == "opened" and building in e["incident"]["buildings"]
        ],
        f"{building}'s incident opened on the events topic",
        TIMEOUT,
    )
    return dict(found[0])


def transition(sub: Subscriber, incident_id: int, name: str) -> dict[str, Any]:
    found = sub.wait(
        lambda: [e for e in sub.transitions(incident_id) if e["transition"] == name],
        f"incident {incident_id}: {name}",
        TIMEOUT,
    )
    return dict(found[-1])


def retained_now(broker: Mosquitto, subscriber_factory: Any, client_id: str) -> Subscriber:
    """A viewer started now, on a clean session: what it gets first is what the broker retains."""
    return subscriber_factory(client_id=client_id, persistent=False)


def test_incident_life_on_the_topics(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver, subscriber_factory: Any
) -> None:
    sub = subscriber_factory()
    site = with_oncall(fleet_site(tmp_path, mosquitto, staff_url=receiver.url("json", "/staff")))
    with site:
        state = sub.wait(lambda: sub.latest(topic("gateway")), "the gateway's retained state")
        body = state.json()
        assert body["v"] == 1 and body["type"] == "gateway" and body["state"] == "online"
        assert body["site"] == "livetest" and body["gateway"] == GATEWAY
        assert body["buildings"] == ["B1", "B2"] and body["devices_total"] == 3
        sub.wait(
            lambda: (m := sub.latest(topic("gateway"))) and m.json()["devices_up"] == 3, "every device up"
        )
        assert {"at", "started_at", "version", "devices_up", "open_incidents"} <= set(body)

        site.sim.world.cut_power("B1")
        ev = opened(sub, "B1")
        inc_id = ev["incident"]["id"]
        assert ev["v"] == 1 and ev["type"] == "incident" and ev["site"] == "livetest"
        assert ev["id"].startswith(f"livetest/{GATEWAY}/")
        inc = ev["incident"]
        assert inc["kind"] == "power_outage" and inc["severity"] == "critical"
        assert inc["buildings"] == ["B1"] and "B1-main" in inc["devices"]
        assert inc["resolved_at"] is None and inc["drill"] is False and inc["manual"] is False
        for key in ("title", "opened_at", "acknowledged_at", "on_site_at", "escalation_step"):
            assert key in inc

        disp = transition(sub, inc_id, "dispatched")
        assert disp["incident"]["escalation_step"] == 0 and disp["incident"]["dispatched_at"] is not None
        post(site, f"/api/incidents/{inc_id}/ack")
        ack = transition(sub, inc_id, "acknowledged")
        assert ack["incident"]["acknowledged_at"] == ack["at"]
        post(site, f"/api/incidents/{inc_id}/on-site")
        on_site = transition(sub, inc_id, "on_site")
        assert on_site["incident"]["on_site_at"] == on_site["at"]
        assert on_site["incident"]["acknowledged_at"] == ack["at"]

        # the retained state of the open incident is its latest
        state_topic = topic("incident", inc_id)
        latest = sub.wait(
            lambda: (m := sub.latest(state_topic)) is not None and m.json()["transition"] == "on_site" and m,
            "the incident's retained state after on_site",
        )
        assert latest.json()["incident"]["on_site_at"] == on_site["at"]

        # a notice sent to staff is an event
        notice = sub.wait(
            lambda: [e for e in sub.events() if e["type"] == "notice" and e["state"] == "sent"],
            "a notice sent",
        )[0]
        assert notice["incident"] == inc_id and notice["channel"] == "staff" and notice["audience"] == "staff"
        assert notice["id"].startswith(f"livetest/{GATEWAY}/")

        # a late viewer sees the gateway and the open incident at once (retained)
        late = retained_now(mosquitto, subscriber_factory, "late-viewer-1")
        late.wait(lambda: late.latest(topic("gateway")) and late.latest(state_topic), "retained state")
        got = late.latest(state_topic)
        assert got is not None and got.retain and got.json()["incident"]["id"] == inc_id
        kpi = late.wait(lambda: late.latest(topic("kpi")), "the retained KPI snapshot")
        k = kpi.json()
        assert k["type"] == "kpi" and set(k["kpis"]) == {"informed", "response", "satisfaction"}
        assert {"met", "total", "value", "target", "ok"} <= set(k["kpis"]["response"])

        # /metrics says the bridge is connected and what the broker acknowledged
        with urllib.request.urlopen(site.daemon.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "meterwatch_fleet_connected 1.0" in metrics
        acked = [ln for ln in metrics.splitlines() if ln.startswith("meterwatch_fleet_acked_total ")]
        assert acked and float(acked[0].split()[1]) >= 5, acked  # opened .. on_site and a notice at least
        assert 'meterwatch_gc_collections_total{generation="2"}' in metrics

        site.sim.world.restore_power("B1")
        resolved = transition(sub, inc_id, "resolved")
        assert resolved["incident"]["resolved_at"] is not None
        # its retained topic is cleared: a viewer started now sees no incident at all
        sub.wait(
            lambda: (m := sub.latest(state_topic)) is not None and m.payload == b"",
            "the incident's retained topic cleared",
        )
        later = retained_now(mosquitto, subscriber_factory, "late-viewer-2")
        later.wait(lambda: later.latest(topic("gateway")), "the gateway's retained state")
        assert later.latest(topic("gateway")).retain  # type: ignore[union-attr]
        assert not [m for m in later.all("/incident/") if m.payload], "a resolved incident is still retained"

    # each event once by id, and each of the incident's transitions in the store once
    events = sub.events()
    assert max(id_counts(events).values()) == 1
    names = [e["transition"] for e in sub.transitions(inc_id)]
    for name in ("opened", "dispatched", "acknowledged", "on_site", "resolved"):
        assert names.count(name) == 1, names
    # the clean stop says offline on the retained topic
    last = sub.wait(
        lambda: (m := sub.latest(topic("gateway"))) and m.json()["state"] == "offline" and m, "offline"
    )
    assert last.json()["gateway"] == GATEWAY
