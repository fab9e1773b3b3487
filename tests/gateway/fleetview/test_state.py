"""The view's state on its own (no broker): what each version-1 message does to it, merging gateways that
share a site, judging offline and past target, and keeping what is known through a malformed payload."""

from __future__ import annotations

import json
import logging

import pytest

from bench.fleet_view import gateway_msg, incident_msg, kpi_msg
from gateway.fleetview.state import FleetState

NOW = 1_796_016_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def feed(state: FleetState, *messages: tuple[str, bytes]) -> None:
    for topic, payload in messages:
        state.ingest(topic, payload)


def test_gateways_sharing_a_site_are_one_compound_with_merged_kpis() -> None:
    state = FleetState(Clock())
    feed(
        state,
        gateway_msg("acme", "north", "gw-a", "online", NOW),
        gateway_msg("acme", "north", "gw-b", "online", NOW),
        gateway_msg("other", "north", "gw-c", "online", NOW),  # same site id, another company
        kpi_msg("acme", "north", "gw-a", NOW, {"informed": (9, 10), "satisfaction": (1, 4)}),
        kpi_msg("acme", "north", "gw-b", NOW, {"informed": (1, 10), "satisfaction": (3, 4)}),
    )
    snap = state.snapshot()
    assert [(s["company"], s["site"]) for s in snap["sites"]] == [("acme", "north"), ("other", "north")]
    north = snap["sites"][0]
    assert [g["gateway"] for g in north["gateways"]] == ["gw-a", "gw-b"]
    assert north["kpis"]["informed"] == {"met": 10, "total": 20, "value": 0.5, "target": 0.9, "ok": False}
    assert north["kpis"]["satisfaction"]["value"] == 0.5 and north["kpis"]["satisfaction"]["ok"] is False
    assert north["kpis"]["response"] == {"met": 0, "total": 0, "value": None, "target": 0.9, "ok": None}
    assert north["kpi_red"] == 2


def test_an_incident_past_the_target_is_late_until_acknowledged_and_goes_when_cleared() -> None:
    clock = Clock()
    state = FleetState(clock)
    topic, late = incident_msg(
        "acme", "north", "gw-a", 7, "power_outage", "critical", ["B1"], NOW - 2000, NOW - 1900
    )
    feed(state, (topic, late))
    inc = state.snapshot()["sites"][0]["incidents"][0]
    assert (
        inc["late"] and not inc["acknowledged"] and inc["elapsed_s"] == 1900.0 and inc["target_s"] == 1800.0
    )
    _, acked = incident_msg(
        "acme", "north", "gw-a", 7, "power_outage", "critical", ["B1"], NOW - 2000, NOW - 1900, NOW - 100
    )
    feed(state, (topic, acked))
    inc = state.snapshot()["sites"][0]["incidents"][0]
    assert not inc["late"] and inc["acknowledged"]
    feed(state, (topic, b""))  # resolved: the retained topic is cleared
    assert state.snapshot()["sites"] == []


def test_offline_by_last_will_or_by_a_silent_heartbeat() -> None:
    clock = Clock()
    state = FleetState(clock)
    feed(
        state,
        gateway_msg("acme", "a", "gw", "online", NOW, heartbeat=30.0),
        gateway_msg("acme", "b", "gw", "offline", NOW - 5000),  # the will's `at` is its connect time
    )
    b, a = state.snapshot()["sites"]  # the site with a gateway offline first
    assert (a["site"], b["site"]) == ("a", "b")
    assert not a["gateways"][0]["offline"]
    assert b["gateways"][0]["offline"] and b["gateways"][0]["why"] == "last_will"
    assert b["gateways"][0]["age_s"] == 0.0  # judged from when it was received
    clock.now = NOW + 91  # 3 x the 30 s heartbeat
    a = next(s for s in state.snapshot()["sites"] if s["site"] == "a")
    assert a["gateways"][0]["offline"] and a["gateways"][0]["why"] == "silent"
    assert a["gateways_offline"] == 1


def test_no_heartbeat_interval_means_silent_after_90_s() -> None:
    clock = Clock()
    state = FleetState(clock)
    topic, payload = gateway_msg("acme", "a", "gw", "online", NOW)
    body = json.loads(payload)
    del body["heartbeat"]
    feed(state, (topic, json.dumps(body).encode()))
    clock.now = NOW + 89
    assert not state.snapshot()["sites"][0]["gateways"][0]["offline"]
    clock.now = NOW + 91
    assert state.snapshot()["sites"][0]["gateways"][0]["offline"]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"v": 2, "type": "gateway", "state": "online", "at": 1}', "version 2, expected 1"),
        (b'{"v": 1, "type": "kpi"}', "type 'kpi', expected 'gateway'"),
        (b'{"v": 1, "type": "gateway", "at": 1}', "missing field state"),
        (b'{"v": 1, "type": "gateway", "state": "sleeping", "at": 1}', "state 'sleeping'"),
        (b'{"v": 1, "type": "gateway", "state": "online", "at": "noon"}', "field at is 'noon'"),
    ],
)
def test_a_malformed_payload_is_counted_logged_once_and_keeps_what_was_known(
    payload: bytes, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = FleetState(Clock())
    topic, good = gateway_msg("acme", "a", "gw", "online", NOW)
    feed(state, (topic, good))
    with caplog.at_level(logging.WARNING, "meterwatch.fleetview"):
        feed(state, (topic, payload), (topic, payload), (topic, payload))
    snap = state.snapshot()
    assert snap["malformed"] == {topic: {"count": 3, "error": snap["malformed"][topic]["error"]}}
    assert error in snap["malformed"][topic]["error"]
    assert snap["malformed_total"] == 3
    assert snap["sites"][0]["gateways"][0]["state"] == "online"  # the known state stands
    logged = [r for r in caplog.records if topic in r.getMessage()]
    assert len(logged) == 1 and error in logged[0].getMessage()


def test_malformed_incident_and_kpi_payloads_leave_no_site_behind() -> None:
    state = FleetState(Clock())
    feed(
        state,
        ("meterwatch/acme/x/incident/gw/1", b'{"v": 1, "type": "incident", "incident": {"id": 1}}'),
        ("meterwatch/acme/x/kpi/gw", b'{"v": 1, "type": "kpi", "at": 1, "kpis": {"informed": {"met": 1}}}'),
    )
    snap = state.snapshot()
    assert snap["sites"] == [] and snap["malformed_total"] == 2
    errors = {t.split("/")[3]: m["error"] for t, m in snap["malformed"].items()}
    assert "missing field incident.kind" in errors["incident"]
    assert "missing field kpis.informed.total" in errors["kpi"]


def test_events_and_other_topics_are_not_state() -> None:
    state = FleetState(Clock())
    feed(
        state,
        ("meterwatch/acme/x/events/gw", b'{"v": 1, "type": "notice"}'),
        ("meterwatch/acme/x/command/gw", b"{}"),
        ("meterwatch/acme/x/incident/gw", b"{}"),  # no incident id level
    )
    snap = state.snapshot()
    assert snap["sites"] == [] and snap["ignored"] == 3 and snap["malformed_total"] == 0


def test_sites_needing_someone_come_first() -> None:
    state = FleetState(Clock())
    feed(
        state,
        gateway_msg("acme", "a-calm", "gw", "online", NOW),
        kpi_msg("acme", "b-red-kpi", "gw", NOW, {"informed": (1, 2)}),
        incident_msg("acme", "c-open", "gw", 1, "comm_fault", "minor", ["B1"], NOW - 60),
        gateway_msg("acme", "d-offline", "gw", "offline", NOW),
        incident_msg("acme", "e-late", "gw", 1, "power_outage", "critical", ["B1"], NOW - 4000, NOW - 3900),
    )
    order = [s["site"] for s in state.snapshot()["sites"]]
    assert order == ["e-late", "d-offline", "c-open", "b-red-kpi", "a-calm"]


def test_after_a_reconnect_what_the_retained_burst_leaves_out_goes() -> None:
    clock = Clock()
    state = FleetState(clock)
    gw = gateway_msg("acme", "north", "gw-a", "online", NOW)
    kept = incident_msg("acme", "north", "gw-a", 1, "power_outage", "critical", ["B1"], NOW - 60)
    cleared = incident_msg("acme", "north", "gw-a", 2, "comm_fault", "minor", ["B2"], NOW - 60)
    other = gateway_msg("acme", "south", "gw-s", "online", NOW)
    for topic, payload in (gw, kept, cleared, other):
        state.ingest(topic, payload, retained=True)
    state.begin_resync()  # reconnected; incident 2 and site south were cleared meanwhile
    clock.now += 0.5
    for topic, payload in (gw, kept):
        state.ingest(topic, payload, retained=True)
    clock.now += 1.0
    snap = state.snapshot()  # the burst is not over yet: nothing dropped
    assert snap["totals"] == {
        "sites": 2,
        "gateways": 2,
        "gateways_offline": 0,
        "incidents": 2,
        "incidents_late": 0,
        "links": 0,
    }
    clock.now += 3.0
    snap = state.snapshot()
    assert [s["site"] for s in snap["sites"]] == ["north"]
    assert [i["id"] for i in snap["sites"][0]["incidents"]] == [1]
    assert snap["resyncs"] == 1


def test_a_live_heartbeat_counts_on_the_views_clock_a_retained_one_on_its_own() -> None:
    clock = Clock()
    state = FleetState(clock)
    # a gateway whose clock is 10 minutes behind, heard live: online
    state.ingest(*gateway_msg("acme", "skewed", "gw", "online", NOW - 600, heartbeat=30.0))
    # the stored copy of a gateway last heard 10 minutes ago, sent at SUBSCRIBE: silent
    state.ingest(*gateway_msg("acme", "stale", "gw", "online", NOW - 600, heartbeat=30.0), retained=True)
    # a retained copy stamped in the future (a clock ahead) is no younger than now
    state.ingest(*gateway_msg("acme", "ahead", "gw", "online", NOW + 600, heartbeat=30.0), retained=True)
    gateways = {s["site"]: s["gateways"][0] for s in state.snapshot()["sites"]}
    assert not gateways["skewed"]["offline"] and gateways["skewed"]["age_s"] == 0.0
    assert gateways["stale"]["offline"] and gateways["stale"]["why"] == "silent"
    assert gateways["stale"]["age_s"] == 600.0
    assert not gateways["ahead"]["offline"]
    clock.now += 91
    gateways = {s["site"]: s["gateways"][0] for s in state.snapshot()["sites"]}
    assert gateways["ahead"]["offline"] and gateways["skewed"]["offline"]
