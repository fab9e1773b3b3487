"""Acknowledge from afar (issue 13, item 2), the fleet view's side: `meterwatch fleet --command-key` as a
child process, a real mosquitto and the real daemon of tests/gateway/fleet (commands enabled with the
pair's public key). An acknowledge asked for on the view's API is signed, published, applied by the
gateway through its desk and its outcome shows on the view; the page's form does the same for "on site";
the view refuses what it cannot send; without the key the page has no buttons and the routes answer 403.
The page with buttons in headless Chromium (MW_UPDATE_SCREENSHOTS=1 copies it to
docs/screenshots/fleet-commands.png)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.fleet_view import ViewProcess
from gateway.fleet.command_format import keygen
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import COMPANY, GATEWAY, TOKEN, TOKEN_ENV, FleetSite, Subscriber, fleet_site
from tests.gateway.fleetview.conftest import TIMEOUT, Views, realistic_fleet, retain, shows, site_of
from tests.gateway.fleetview.test_page import chromium
from tests.helpers import REPO, wait_until

SITE = "livetest"
SHOT = REPO / "docs" / "screenshots" / "fleet-commands.png"
ONCALL = """
oncall:
  people: [{id: wang, name: Wang, phone: "13800000001"}]
  shifts: [{oncall: wang}]
"""


def request(
    view: ViewProcess, path: str, body: bytes | None = None, ctype: str = "application/json"
) -> tuple[int, Any, dict[str, str]]:
    """(status, body as JSON or text, headers), without following a redirect."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kw: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(
        view.url + path.lstrip("/"),
        data=body,
        headers={"Content-Type": ctype},
        method="GET" if body is None else "POST",
    )
    try:
        with opener.open(req, timeout=15) as resp:
            status, raw, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


def command(view: ViewProcess, **fields: Any) -> tuple[int, Any]:
    status, body, _ = request(view, "/api/commands", json.dumps(fields).encode())
    return status, body


def answered(view: ViewProcess, cid: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status, body, _ = request(view, f"/api/commands/{cid}")
        return body if status == 200 and body["state"] in ("accepted", "rejected") else None

    return wait_until(check, TIMEOUT, 0.05, f"the gateway's answer to {cid} (view log: {view.output()})")


def publish(broker: Mosquitto, topic: str, body: dict[str, Any]) -> None:
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"stand-in-{time.monotonic_ns()}",
                    protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        info = client.publish(topic, json.dumps(body).encode(), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def gateway_api(site: FleetSite, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        site.daemon.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_acknowledge_from_the_fleet_view(
    tmp_path: Path,
    mosquitto: Mosquitto,
    view_factory: Views,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    private, public = keygen(tmp_path / "keys")
    sub = Subscriber(mosquitto, client_id="fleet-commands-watch")
    try:
        check_commands(tmp_path, mosquitto, view_factory, sub, private, public)
    finally:
        sub.close()


def check_commands(
    tmp_path: Path, mosquitto: Mosquitto, view_factory: Views, sub: Subscriber, private: Path, public: Path
) -> None:
    (tmp_path / "site").mkdir()
    site = fleet_site(tmp_path / "site", mosquitto)
    text = site.site_path.read_text("utf-8").replace(
        "  buffer: ", f"  commands: {{enabled: true, public_key: {public}}}\n  buffer: "
    )
    site.site_path.write_text(text + ONCALL, encoding="utf-8")
    site = FleetSite(site.directory, site.site_path)
    view = view_factory("--company", COMPANY, "--command-key", str(private))
    readonly = view_factory("--company", COMPANY)
    with site:
        inc = int(gateway_api(site, "/api/incidents", {"code": "003", "title": "配电房跳闸"})["id"])
        shows(
            view,
            lambda s: (x := site_of(s, SITE)) and any(i["id"] == inc for i in x["incidents"]),
            "the incident on the view",
        )
        assert site.fleet.commands is not None
        wait_until(lambda: site.fleet.commands.stats.connected, TIMEOUT, 0.05, "the gateway takes commands")  # type: ignore[union-attr]

        # the view's API: signed, published, applied by the gateway's desk, the answer shown
        status, sent = command(
            view, company=COMPANY, site=SITE, gateway=GATEWAY, incident=inc, action="acknowledge", who="王工"
        )
        assert status == 202, sent
        assert sent["state"] in ("sent", "accepted") and sent["action"] == "acknowledge"
        done = answered(view, sent["id"])
        assert done["state"] == "accepted" and done["code"] == "accepted", done
        response = gateway_api(site, f"/api/incidents/{inc}/response")
        assert response["acked_by"] == "王工 via fleet" and response["acked_ts"] is not None
        acked = sub.wait(
            lambda: [e for e in sub.transitions(inc) if e["transition"] == "acknowledged"], "acknowledged"
        )
        assert acked[0]["detail"] == "by 王工 via fleet"
        shows(
            view,
            lambda s: (
                (x := site_of(s, SITE)) and any(i["id"] == inc and i["acknowledged"] for i in x["incidents"])
            ),
            "the incident acknowledged on the view",
        )

        # the page: a form per open incident, its token; posting it sends the command and comes back
        page = view.get("/").decode()
        form = re.search(
            rf'<form class="cmd"[^>]*data-command-form="{GATEWAY}/{inc}">(.*?)</form>', page, re.S
        )
        assert form is not None
        assert 'value="on_site"' in form.group(1) and 'value="acknowledge"' not in form.group(1), "acked"
        token = re.search(r'name="token" value="([^"]+)"', form.group(1))
        assert token is not None
        fields = {"token": token.group(1), "lang": "zh", "company": COMPANY, "site": SITE, "gateway": GATEWAY,
                  "incident": str(inc), "who": "李工", "text": "", "action": "on_site"}  # fmt: skip
        status, _, headers = request(
            view, "/commands", urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"
        )
        assert status == 303 and headers["location"] == "./"
        assert "mw_fleet_who=" in headers.get("set-cookie", "")
        wait_until(
            lambda: gateway_api(site, f"/api/incidents/{inc}/response")["on_site_by"] == "李工 via fleet",
            TIMEOUT,
            0.05,
            "on site from the page's form",
        )
        status, listed, _ = request(view, "/api/commands")
        assert status == 200 and [c["action"] for c in listed["commands"]][:2] == ["on_site", "acknowledge"]
        on_site = answered(view, listed["commands"][0]["id"])
        assert on_site["state"] == "accepted"
        page = view.get("/").decode()
        assert f'data-command="{on_site["id"]}" data-state="accepted"' in page and "网关已执行" in page

        status, note = command(
            view,
            company=COMPANY,
            site=SITE,
            gateway=GATEWAY,
            incident=inc,
            action="note",
            who="王工",
            text="备注",
        )
        assert status == 202 and answered(view, note["id"])["state"] == "accepted"
        notes = gateway_api(site, f"/api/incidents/{inc}/response")["notes"]
        assert [(n["who"], n["text"]) for n in notes] == [("王工 via fleet", "备注")]

        # what the view refuses itself (nothing is sent)
        for fields_, code, words in (
            ({"incident": 999, "action": "acknowledge", "who": "王工"}, 404, "no open incident"),
            ({"incident": inc, "action": "resolve", "who": "王工"}, 400, "action"),
            ({"incident": inc, "action": "note", "who": "王工", "text": " "}, 400, "a note needs its words"),
            ({"incident": inc, "action": "acknowledge", "who": ""}, 400, "who"),
            ({"incident": "x", "action": "acknowledge", "who": "王工"}, 400, "incident"),
        ):
            status, body = command(view, company=COMPANY, site=SITE, gateway=GATEWAY, **fields_)
            assert status == code and words in body["error"], (fields_, body)
        status, body, _ = request(view, "/api/commands", b'{"x": 1}', "text/plain")
        assert status == 415
        stale = {**fields, "token": "forged"}
        status, _, _ = request(
            view, "/commands", urllib.parse.urlencode(stale).encode(), "application/x-www-form-urlencoded"
        )
        assert status == 403

        # without the key: read-only, no buttons, the routes refuse
        shows(readonly, lambda s: site_of(s, SITE) is not None, "the site on the read-only view")
        assert "data-command-form" not in readonly.get("/").decode()
        assert 'http-equiv="refresh" content="10"' in readonly.get("/").decode()
        status, body = command(
            readonly, company=COMPANY, site=SITE, gateway=GATEWAY, incident=inc, action="acknowledge", who="x"
        )
        assert status == 403 and "read-only" in body["error"]
        status, _, _ = request(
            readonly,
            "/commands",
            urllib.parse.urlencode(fields).encode(),
            "application/x-www-form-urlencoded",
        )
        assert status == 403
    # one outcome per command id on the events topic
    outcomes = [e["command"] for e in sub.events() if e["type"] == "command"]
    assert len(outcomes) == len(set(outcomes)) == 3  # acknowledge, on site, note


def test_the_page_with_buttons_in_chromium(tmp_path: Path, mosquitto: Mosquitto, view_factory: Views) -> None:
    """The realistic morning of test_page.py, with a command answered by a (stand-in) gateway."""
    now = time.time()
    retain(mosquitto, *realistic_fleet(now))
    private, _ = keygen(tmp_path / "keys")
    view = view_factory("--command-key", str(private))
    shows(view, lambda s: s["totals"]["sites"] == 5 and s["totals"]["incidents"] == 3, "the fleet")
    status, sent = command(
        view, company="acme", site="hillview", gateway="gw-hill-2", incident=7, action="note", who="王工",
        text="水泵已更换，正在恢复供水",
    )  # fmt: skip
    assert status == 202, sent
    status, late = command(
        view,
        company="acme",
        site="riverside",
        gateway="gw-river",
        incident=41,
        action="acknowledge",
        who="李工",
    )
    assert status == 202, late
    # the gateways' answers (stand-ins: realistic_fleet's gateways are retained messages only)
    answer = {"id": "hillview/gw-hill-2/1795996800-99", "v": 1, "type": "command", "site": "hillview",
              "gateway": "gw-hill-2", "command": sent["id"], "action": "note", "incident": 7, "who": "王工",
              "outcome": "accepted", "code": "accepted", "reason": None, "at": now}  # fmt: skip
    refusal = {**answer, "id": "riverside/gw-river/1795996800-77", "site": "riverside", "gateway": "gw-river",
               "command": late["id"], "action": "acknowledge", "incident": 41, "who": "李工",
               "outcome": "rejected", "code": "refused", "reason": "incident 41 is resolved"}  # fmt: skip
    publish(mosquitto, "meterwatch/acme/hillview/events/gw-hill-2", answer)
    publish(mosquitto, "meterwatch/acme/riverside/events/gw-river", refusal)
    assert answered(view, sent["id"])["state"] == "accepted"
    assert answered(view, late["id"])["code"] == "refused"
    shot = tmp_path / "fleet-commands.png"
    dom = chromium(view.url, tmp_path, screenshot=shot)
    for incident in ("gw-river/41", "gw-river/42", "gw-hill-2/7"):
        assert f'data-command-form="{incident}"' in dom
    assert "确认接单" in dom and "已到场" in dom and "添加备注" in dom and "您的姓名" in dom
    assert f'data-command="{sent["id"]}" data-state="accepted"' in dom and "网关已执行" in dom
    assert f'data-command="{late["id"]}" data-state="rejected"' in dom and "事件状态不允许" in dom
    assert 'http-equiv="refresh"' not in dom or 'content=""' in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    en = chromium(view.url + "?lang=en", tmp_path)
    assert "acknowledge" in en and "done by the gateway" in en
    if os.environ.get("MW_UPDATE_SCREENSHOTS") == "1":
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SHOT)
