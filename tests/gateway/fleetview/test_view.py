"""`meterwatch fleet` against a real mosquitto holding the retained version-1 state of a company: a view
started after the messages shows every site, open incident, offline gateway (a real last will) and KPI; a
resolved incident goes; two views side by side show the same; malformed payloads are counted and change
nothing; a bad --broker is exit 2. Everything is waited for on the view's /api/fleet."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.fleet_view import ViewProcess, gateway_msg, incident_msg
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleetview.conftest import TIMEOUT, realistic_fleet, retain, shows, site_of
from tests.helpers import REPO, wait_until

Views = Callable[..., ViewProcess]


def vanish_with_a_last_will(broker: Mosquitto, company: str, site: str, gateway: str) -> None:
    """A gateway's client as the publisher makes it (its offline state as the retained will), gone without
    a DISCONNECT: its socket closed under it, as a kill or a cut cable would."""
    topic, online = gateway_msg(company, site, gateway, "online", time.time())
    _, offline = gateway_msg(company, site, gateway, "offline", time.time())
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{site}", protocol=MQTTProtocolVersion.MQTTv5)
    client.will_set(topic, offline, qos=1, retain=True)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    info = client.publish(topic, online, qos=1, retain=True)
    info.wait_for_publish(10)
    assert info.is_published()
    client.loop_stop()
    sock = client.socket()
    assert sock is not None
    sock.close()  # no DISCONNECT: the broker publishes the will


def projection(state: dict[str, Any]) -> list[Any]:
    """What a person sees of each site, without the ages that move with the clock."""
    return [
        (
            s["company"],
            s["site"],
            [(g["gateway"], g["offline"], g["why"]) for g in s["gateways"]],
            [
                (i["gateway"], i["id"], i["kind"], i["late"], i["acknowledged"], i["on_site"])
                for i in s["incidents"]
            ],
            s["kpis"],
        )
        for s in state["sites"]
    ]


def test_a_view_started_late_shows_the_whole_fleet_and_follows_it(
    mosquitto: Mosquitto, view_factory: Views
) -> None:
    now = time.time()
    retain(mosquitto, *realistic_fleet(now))
    vanish_with_a_last_will(mosquitto, "acme", "eastgate", "gw-east")

    view = view_factory()
    state = shows(
        view,
        lambda s: (
            s["totals"]["sites"] == 6
            and s["totals"]["gateways_offline"] == 1
            and s["totals"]["incidents"] == 3
        ),
        "six sites, one gateway offline, three open incidents",
    )
    assert state["broker"]["subscribed"] and state["broker"]["topic"] == "meterwatch/+/+/#"
    east = site_of(state, "eastgate")
    assert east is not None and east["gateways"][0]["offline"] and east["gateways"][0]["why"] == "last_will"
    hill = site_of(state, "hillview")
    assert hill is not None and [g["gateway"] for g in hill["gateways"]] == ["gw-hill-1", "gw-hill-2"]
    assert hill["kpis"]["informed"] == {"met": 8, "total": 10, "value": 0.8, "target": 0.9, "ok": False}
    assert hill["incidents"][0]["on_site"] and not hill["incidents"][0]["late"]
    river = site_of(state, "riverside")
    assert river is not None
    late, young = river["incidents"]
    assert (late["id"], late["kind"], late["late"], late["acknowledged"]) == (41, "power_outage", True, False)
    assert late["buildings"] == ["B3"] and late["elapsed_s"] >= 2640
    assert (young["id"], young["late"]) == (42, False)
    assert state["totals"]["incidents_late"] == 1
    park = site_of(state, "parkway")
    assert (
        park is not None
        and park["kpis"]["informed"]["ok"] is False
        and park["kpis"]["response"]["ok"] is True
    )
    garden = site_of(state, "garden-court")
    assert garden is not None and garden["kpis"]["informed"]["value"] is None
    assert state["malformed_total"] == 0

    # a second view side by side (its own random client id, a clean session) shows the same
    other = view_factory()
    twin = shows(
        other, lambda s: projection(s) == projection(view.api() or {}), "the same fleet in both views"
    )
    assert twin["broker"]["client_id"] != state["broker"]["client_id"]

    # the incident resolves: its retained topic is cleared, and it goes from both views
    retain(mosquitto, ("meterwatch/acme/riverside/incident/gw-river/41", b""))
    for v in (view, other):
        gone = shows(v, lambda s: s["totals"]["incidents"] == 2, "the resolved incident gone")
        river = site_of(gone, "riverside")
        assert river is not None and [i["id"] for i in river["incidents"]] == [42]
        assert gone["totals"]["incidents_late"] == 0

    # the gateway comes back: online again
    retain(mosquitto, gateway_msg("acme", "eastgate", "gw-east", "online", time.time()))
    shows(view, lambda s: s["totals"]["gateways_offline"] == 0, "the gateway back online")


def test_malformed_payloads_are_counted_and_change_nothing(mosquitto: Mosquitto, view_factory: Views) -> None:
    now = time.time()
    good = incident_msg("acme", "north", "gw-a", 3, "power_outage", "critical", ["B1"], now - 60, now - 50)
    retain(mosquitto, gateway_msg("acme", "north", "gw-a", "online", now), good)
    view = view_factory()
    shows(view, lambda s: s["totals"]["incidents"] == 1, "the incident")
    retain(
        mosquitto,
        (good[0], b"{not json"),  # the known incident's topic: what was known stays
        ("meterwatch/acme/north/gateway/gw-a", b'{"v": 9, "type": "gateway", "state": "offline", "at": 1}'),
        ("meterwatch/acme/south/kpi/gw-s", b'{"v": 1, "type": "kpi", "at": 1}'),
    )
    state = shows(view, lambda s: s["malformed_total"] == 3, "three malformed payloads counted")
    assert set(state["malformed"]) == {
        good[0],
        "meterwatch/acme/north/gateway/gw-a",
        "meterwatch/acme/south/kpi/gw-s",
    }
    assert "not JSON" in state["malformed"][good[0]]["error"]
    assert "version 9" in state["malformed"]["meterwatch/acme/north/gateway/gw-a"]["error"]
    assert "missing field kpis" in state["malformed"]["meterwatch/acme/south/kpi/gw-s"]["error"]
    assert [s["site"] for s in state["sites"]] == ["north"]  # no site made of a bad payload
    north = state["sites"][0]
    assert north["incidents"][0]["id"] == 3 and north["gateways"][0]["state"] == "online"
    # the page still renders, and says how many were ignored
    page = view.get("").decode()
    assert 'id="malformed"' in page and "3" in page
    # the view logged each bad topic once, and is still alive
    wait_until(lambda: view.output().count("malformed fleet payload") == 3, TIMEOUT, 0.05, "three log lines")
    assert view.proc.poll() is None


def test_company_filter(mosquitto: Mosquitto, view_factory: Views) -> None:
    now = time.time()
    retain(
        mosquitto,
        gateway_msg("acme", "north", "gw-a", "online", now),
        gateway_msg("rival", "south", "gw-r", "online", now),
    )
    everyone = view_factory()
    shows(everyone, lambda s: s["totals"]["sites"] == 2, "both companies")
    acme = view_factory("--company", "acme")
    state = shows(acme, lambda s: s["broker"]["subscribed"] and s["totals"]["sites"] >= 1, "acme's site")
    assert state["broker"]["topic"] == "meterwatch/acme/+/#"
    assert [(s["company"], s["site"]) for s in state["sites"]] == [("acme", "north")]


def test_the_page_answers_in_chinese_and_english(mosquitto: Mosquitto, view_factory: Views) -> None:
    now = time.time()
    retain(mosquitto, *realistic_fleet(now))
    view = view_factory()
    shows(view, lambda s: s["totals"]["incidents"] == 3, "the fleet")
    zh = view.get("").decode()
    en = view.get("?lang=en").decode()
    assert (
        '<html lang="zh-CN">' in zh and "物业集团总览" in zh and "停电" in zh and "超过30分钟响应目标" in zh
    )
    assert '<html lang="en">' in en and "Fleet overview" in en and "power outage" in en and "past the" in en
    assert 'http-equiv="refresh"' in zh
    for name in ("riverside", "hillview", "lakeside", "parkway", "garden-court"):
        assert name in zh
    assert view.get("assets/pages.css").startswith(b"/* meterwatch pages")


def fleet_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "fleet", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_broker_url_is_a_clear_error_with_exit_2() -> None:
    for url, why in (
        ("http://broker:1883", "expected mqtt://host[:port] or mqtts://host[:port]"),
        ("mqtt://user:pw@broker", "credentials"),
        ("mqtt://broker:99999", "bad port"),
        ("mqtt://", "names no host"),
    ):
        r = fleet_cli("--broker", url)
        assert r.returncode == 2, (url, r.stdout, r.stderr)
        assert f"--broker {url!r}" in r.stderr and why in r.stderr and "Traceback" not in r.stderr
    r = fleet_cli("--broker", "mqtt://127.0.0.1:1", "--http", "nowhere")
    assert r.returncode == 2 and "expected HOST:PORT" in r.stderr
    r = fleet_cli("--broker", "mqtt://127.0.0.1:1", "--company", "Acme PM")
    assert r.returncode == 2 and "--company" in r.stderr


def test_a_broker_that_is_not_there_yet_is_said_on_the_page(
    view_factory: Views, mosquitto: Mosquitto
) -> None:
    mosquitto.stop()
    view = view_factory()
    state = shows(view, lambda s: True, "an answer")
    assert not state["broker"]["connected"]
    assert 'id="disconnected"' in view.get("").decode()
    mosquitto.start()
    shows(view, lambda s: s["broker"]["subscribed"], "the view connected once the broker is up")


def test_an_incident_cleared_while_the_view_was_away_goes_after_it_reconnects(
    mosquitto: Mosquitto, view_factory: Views
) -> None:
    now = time.time()
    retain(
        mosquitto,
        gateway_msg("acme", "north", "gw-a", "online", now),
        incident_msg("acme", "north", "gw-a", 1, "power_outage", "critical", ["B1"], now - 60),
        incident_msg("acme", "north", "gw-a", 2, "comm_fault", "minor", ["B2"], now - 60),
    )
    view = view_factory()
    state = shows(view, lambda s: s["totals"]["incidents"] == 2, "both incidents")
    # another client takes the view's client id: the broker drops the view's connection, and the view
    # reconnects a second later (paho's backoff); meanwhile incident 2 resolves (its retained topic cleared)
    thief = Client(
        CallbackAPIVersion.VERSION2,
        client_id=state["broker"]["client_id"],
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    thief.connect(mosquitto.host, mosquitto.port, keepalive=30)
    thief.loop_start()
    try:
        info = thief.publish("meterwatch/acme/north/incident/gw-a/2", b"", qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        thief.disconnect()
        thief.loop_stop()
    after = shows(
        view,
        lambda s: s["broker"]["connects"] >= 2 and s["resyncs"] >= 1 and s["totals"]["incidents"] == 1,
        "the view reconnected, with incident 2 gone",
    )
    assert [i["id"] for i in after["sites"][0]["incidents"]] == [1]
    assert after["sites"][0]["gateways"][0]["state"] == "online"  # what came again stays


def test_tls_and_a_broker_user_from_the_environment(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto-tls-users", users={"viewer": "v1ew-pw"}, tls=True)
    broker.start()
    views: list[ViewProcess] = []
    try:
        assert broker.ca_file is not None
        pub = Client(CallbackAPIVersion.VERSION2, client_id="seed", protocol=MQTTProtocolVersion.MQTTv5)
        pub.username_pw_set("viewer", "v1ew-pw")
        pub.tls_set(ca_certs=str(broker.ca_file))
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        topic, payload = gateway_msg("acme", "north", "gw-a", "online", time.time())
        info = pub.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        assert info.is_published()
        env = {"METERWATCH_FLEET_USERNAME": "viewer", "METERWATCH_FLEET_PASSWORD": "v1ew-pw"}
        ca = ("--tls-ca", str(broker.ca_file))
        good = ViewProcess(broker.port, *ca, scheme="mqtts", env=env, log=tmp_path / "good.log")
        views.append(good)
        shows(good, lambda s: s["totals"]["gateways"] == 1, "the gateway over TLS with a user")
        wrong = {**env, "METERWATCH_FLEET_PASSWORD": "nope"}
        refused = ViewProcess(broker.port, *ca, scheme="mqtts", env=wrong, log=tmp_path / "refused.log")
        views.append(refused)
        state = shows(refused, lambda s: s["broker"]["error"], "the refusal said")
        assert not state["broker"]["connected"] and state["sites"] == []
        assert "v1ew-pw" not in refused.output() and "nope" not in refused.output()
    finally:
        for v in views:
            v.stop()
        broker.stop()
