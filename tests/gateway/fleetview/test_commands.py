"""Acknowledge from afar (issue 13, item 2), the fleet view's side: `meterwatch fleet --command-key` as a
child process with named tokens, a real mosquitto and the real daemon of tests/gateway/fleet (commands
enabled with the pair's public key). Only a token's holder may command, in the token's name: the API
without a token is 401, with a wrong one 403; an acknowledge with wang's token is signed, published, applied
by the gateway through its desk as "wang via fleet" and its outcome shows on the view; the page shows a
login form and no buttons until its cookie login, then its form (with the form token still required) does
the same for "on site" in li's name; the view refuses what it cannot send; without the key the page has no
buttons and the routes answer 403. The login and the page with buttons in headless Chromium
(MW_UPDATE_SCREENSHOTS=1 copies it to docs/screenshots/fleet-commands.png)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
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
from gateway.fleetview.page import COOKIE
from gateway.fleetview.tokens import ENV as TOKENS_ENV
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import COMPANY, GATEWAY, TOKEN, TOKEN_ENV, FleetSite, Subscriber, fleet_site
from tests.gateway.fleetview.conftest import TIMEOUT, Views, realistic_fleet, retain, shows, site_of
from tests.gateway.fleetview.test_page import DESK
from tests.gateway.web.test_pages import Browser
from tests.helpers import REPO, wait_until

SITE = "livetest"
SHOT = REPO / "docs" / "screenshots" / "fleet-commands.png"
WANG, LI = "wang-fleet-token-5c1d9e", "li-fleet-token-77ab0f3=="
TOKENS = f"wang={WANG},li={LI}"
ONCALL = """
oncall:
  people: [{id: wang, name: Wang, phone: "13800000001"}]
  shifts: [{oncall: wang}]
"""


def request(
    view: ViewProcess,
    path: str,
    body: bytes | None = None,
    ctype: str = "application/json",
    token: str | None = WANG,
    cookie: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, body as JSON or text, headers), without following a redirect; `token` as the bearer,
    `cookie` as the login cookie's value."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kw: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    req = urllib.request.Request(
        view.url + path.lstrip("/"), data=body, headers=headers, method="GET" if body is None else "POST"
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


def command(view: ViewProcess, token: str | None = WANG, **fields: Any) -> tuple[int, Any]:
    status, body, _ = request(view, "/api/commands", json.dumps(fields).encode(), token=token)
    return status, body


def form_post(
    view: ViewProcess, path: str, fields: dict[str, str], cookie: str | None
) -> tuple[int, Any, dict[str, str]]:
    body = urllib.parse.urlencode(fields).encode()
    return request(view, path, body, "application/x-www-form-urlencoded", token=None, cookie=cookie)


def page_of(view: ViewProcess, cookie: str | None = None) -> str:
    status, body, _ = request(view, "/", token=None, cookie=cookie)
    assert status == 200
    return str(body)


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


def test_acknowledge_from_the_fleet_view(
    tmp_path: Path,
    mosquitto: Mosquitto,
    view_factory: Views,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(TOKENS_ENV, TOKENS)  # the read-only view has them too: unused there
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
        inc = int(site.api("/api/incidents", {"code": "003", "title": "配电房跳闸"})["id"])
        shows(
            view,
            lambda s: (x := site_of(s, SITE)) and any(i["id"] == inc for i in x["incidents"]),
            "the incident on the view",
        )
        assert site.fleet.commands is not None
        wait_until(lambda: site.fleet.commands.stats.connected, TIMEOUT, 0.05, "the gateway takes commands")  # type: ignore[union-attr]

        # who may command: no token 401, a token the view does not have 403; nothing sent either way
        ack = {"company": COMPANY, "site": SITE, "gateway": GATEWAY, "incident": inc, "action": "acknowledge"}
        status, body, headers = request(view, "/api/commands", json.dumps(ack).encode(), token=None)
        assert (
            status == 401 and "a token is needed" in body["error"] and headers["www-authenticate"] == "Bearer"
        )
        status, body = command(view, token="not-a-fleet-token-at-all", **ack)
        assert status == 403 and "not one of the fleet view's tokens" in body["error"]
        status, body = command(view, token=TOKEN, **ack)  # the gateway's own token is not the view's
        assert status == 403
        for path in ("/api/commands", "/api/commands/x"):  # who sent what: for those who may send
            assert request(view, path, token=None)[0] == 401
            assert request(view, path, token="not-a-fleet-token-at-all")[0] == 403
        status, body = command(view, **ack, who="李工")  # the name is the token's, not the sender's choice
        assert status == 400 and "your token's name (wang)" in body["error"]
        assert request(view, "/api/commands")[1] == {"commands": []}

        # the view's API with wang's token: signed in wang's name, published, applied by the gateway's desk
        status, sent = command(view, **ack)
        assert status == 202, sent
        assert sent["state"] in ("sent", "accepted") and sent["action"] == "acknowledge"
        assert sent["who"] == "wang"
        done = answered(view, sent["id"])
        assert done["state"] == "accepted" and done["code"] == "accepted", done
        response = site.api(f"/api/incidents/{inc}/response")
        assert response["acked_by"] == "wang via fleet" and response["acked_ts"] is not None
        acked = sub.wait(
            lambda: [e for e in sub.transitions(inc) if e["transition"] == "acknowledged"], "acknowledged"
        )
        assert acked[0]["detail"] == "by wang via fleet"
        shows(
            view,
            lambda s: (
                (x := site_of(s, SITE)) and any(i["id"] == inc and i["acknowledged"] for i in x["incidents"])
            ),
            "the incident acknowledged on the view",
        )

        # the page without a login: the fleet as a read-only view shows it, a login form, no buttons, no
        # commands panel (who sent what); the form token is on the login form
        page = page_of(view)
        assert f'data-incident="{GATEWAY}/{inc}"' in page and 'id="fleet-login"' in page
        assert "data-command-form" not in page and 'id="commands"' not in page and "wang" not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        login = {"csrf": csrf.group(1), "lang": "zh", "token": "not-a-fleet-token-at-all"}
        status, body, headers = form_post(view, "/login", login, None)
        assert status == 403 and "令牌不正确" in body and "set-cookie" not in {k.lower() for k in headers}
        status, body, _ = form_post(view, "/login", {**login, "token": LI, "csrf": "forged"}, None)
        assert status == 403 and "reload the page" in body["error"]
        status, _, headers = form_post(view, "/login", {**login, "token": LI}, None)
        assert status == 303 and headers["location"] == "./"
        cookie = headers["set-cookie"]
        assert cookie.startswith(f'{COOKIE}="{LI}"'), cookie  # quoted: base64's '=' is no cookie character
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie

        # logged in (li's cookie): a form per open incident; posting it sends the command in li's name
        page = page_of(view, cookie=LI)
        assert 'data-user="li"' in page and "已登录：li" in page and 'id="fleet-login"' not in page
        form = re.search(
            rf'<form class="cmd"[^>]*data-command-form="{GATEWAY}/{inc}">(.*?)</form>', page, re.S
        )
        assert form is not None and 'name="who"' not in form.group(1)
        assert 'value="on_site"' in form.group(1) and 'value="acknowledge"' not in form.group(1), "acked"
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.group(1))
        assert csrf is not None
        fields = {"csrf": csrf.group(1), "lang": "zh", "company": COMPANY, "site": SITE, "gateway": GATEWAY,
                  "incident": str(inc), "who": "王工", "text": "", "action": "on_site"}  # fmt: skip
        # not logged in 401, a cookie of no token 403, the form token still required: 403; none sent
        status, body, _ = form_post(view, "/commands", {**fields, "who": ""}, None)
        assert status == 401 and "请先登录" in body and 'id="fleet-login"' in body
        status, body, _ = form_post(view, "/commands", {**fields, "who": ""}, "not-a-fleet-token-at-all")
        assert status == 403 and "令牌已失效" in body
        status, body, _ = form_post(view, "/commands", {**fields, "who": "", "csrf": "forged"}, LI)
        assert status == 403 and "reload the page" in body["error"]
        status, _, headers = form_post(view, "/commands", fields, LI)  # 王工: not li's name to give
        assert status == 303 and "your%20token%27s%20name%20%28li%29" in headers["location"]
        assert [c["action"] for c in request(view, "/api/commands")[1]["commands"]] == ["acknowledge"]
        status, _, headers = form_post(view, "/commands", {**fields, "who": ""}, LI)
        assert status == 303 and headers["location"] == "./"
        wait_until(
            lambda: site.api(f"/api/incidents/{inc}/response")["on_site_by"] == "li via fleet",
            TIMEOUT,
            0.05,
            "on site from the page's form",
        )
        status, listed, _ = request(view, "/api/commands")
        assert status == 200 and [c["action"] for c in listed["commands"]][:2] == ["on_site", "acknowledge"]
        assert [c["who"] for c in listed["commands"]][:2] == ["li", "wang"]
        on_site = answered(view, listed["commands"][0]["id"])
        assert on_site["state"] == "accepted"
        page = page_of(view, cookie=LI)
        assert f'data-command="{on_site["id"]}" data-state="accepted"' in page and "网关已执行" in page
        stale = page_of(view, cookie="not-a-fleet-token-at-all")  # e.g. taken away at a restart
        assert "令牌已失效" in stale and 'id="fleet-login"' in stale and "data-command-form" not in stale
        status, _, headers = form_post(view, "/logout", {"lang": "zh"}, LI)
        assert (
            status == 303
            and headers["set-cookie"].startswith(f'{COOKIE}=""')
            and "Max-Age=0" in headers["set-cookie"]
        )

        status, note = command(
            view,
            company=COMPANY,
            site=SITE,
            gateway=GATEWAY,
            incident=inc,
            action="note",
            text="备注",
        )
        assert status == 202 and answered(view, note["id"])["state"] == "accepted"
        notes = site.api(f"/api/incidents/{inc}/response")["notes"]
        assert [(n["who"], n["text"]) for n in notes] == [("wang via fleet", "备注")]

        # what the view refuses itself (nothing is sent)
        for fields_, code, words in (
            ({"incident": 999, "action": "acknowledge"}, 404, "no open incident"),
            ({"incident": inc, "action": "resolve"}, 400, "action"),
            ({"incident": inc, "action": "note", "text": " "}, 400, "a note needs its words"),
            ({"incident": "x", "action": "acknowledge", "who": "wang"}, 400, "incident"),
        ):
            status, body = command(view, company=COMPANY, site=SITE, gateway=GATEWAY, **fields_)
            assert status == code and words in body["error"], (fields_, body)
        status, body, _ = request(view, "/api/commands", b'{"x": 1}', "text/plain")
        assert status == 415

        # without the key: read-only, no buttons, the routes refuse
        shows(readonly, lambda s: site_of(s, SITE) is not None, "the site on the read-only view")
        ro_page = readonly.get("/").decode()
        assert "data-command-form" not in ro_page and 'id="fleet-login"' not in ro_page
        assert 'http-equiv="refresh" content="10"' in ro_page
        status, body = command(readonly, **ack)
        assert status == 403 and "read-only" in body["error"]
        for path in ("/commands", "/login"):
            status, body, _ = form_post(readonly, path, {**fields, "token": WANG}, WANG)
            assert status == 403 and "read-only" in body["error"]
        assert "tokens unused" in readonly.output()
    # one outcome per command id on the events topic
    outcomes = [e["command"] for e in sub.events() if e["type"] == "command"]
    assert len(outcomes) == len(set(outcomes)) == 3  # acknowledge, on site, note


def test_login_and_the_page_with_buttons_in_chromium(
    tmp_path: Path, mosquitto: Mosquitto, view_factory: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The realistic morning of test_page.py, the view's tokens from a file: the page opens with a login
    form and no buttons; wang logs in from it in headless Chromium (the HttpOnly, SameSite=Strict cookie),
    then sees the buttons and the commands (one answered by a stand-in gateway, one refused); logs out."""
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    tokens = tmp_path / "fleet-tokens"
    tokens.write_text(f"# who may command\nwang: {WANG}\nli: {LI}\n", encoding="utf-8")
    tokens.chmod(0o600)
    now = time.time()
    retain(mosquitto, *realistic_fleet(now))
    private, _ = keygen(tmp_path / "keys")
    view = view_factory("--command-key", str(private), "--tokens", str(tokens))
    shows(view, lambda s: s["totals"]["sites"] == 5 and s["totals"]["incidents"] == 3, "the fleet")
    status, sent = command(
        view, company="acme", site="hillview", gateway="gw-hill-2", incident=7, action="note",
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
        token=LI,
    )
    assert status == 202, late
    # the gateways' answers (stand-ins: realistic_fleet's gateways are retained messages only)
    answer = {"id": "hillview/gw-hill-2/1795996800-99", "v": 1, "type": "command", "site": "hillview",
              "gateway": "gw-hill-2", "command": sent["id"], "action": "note", "incident": 7, "who": "wang",
              "outcome": "accepted", "code": "accepted", "reason": None, "at": now}  # fmt: skip
    refusal = {**answer, "id": "riverside/gw-river/1795996800-77", "site": "riverside", "gateway": "gw-river",
               "command": late["id"], "action": "acknowledge", "incident": 41, "who": "li",
               "outcome": "rejected", "code": "refused", "reason": "incident 41 is resolved"}  # fmt: skip
    publish(mosquitto, "meterwatch/acme/hillview/events/gw-hill-2", answer)
    publish(mosquitto, "meterwatch/acme/riverside/events/gw-river", refusal)
    assert answered(view, sent["id"])["state"] == "accepted"
    assert answered(view, late["id"])["code"] == "refused"

    b = Browser(Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)), *DESK)
    try:
        b.call("Emulation.setDeviceMetricsOverride", session=True, width=DESK[0], height=DESK[1],
               deviceScaleFactor=1, mobile=False)  # fmt: skip
        b.goto(view.url)
        dom = b.html()
        assert 'id="fleet-login"' in dom and "远程操作需登录" in dom
        assert "data-command-form" not in dom and 'id="commands"' not in dom  # nothing to do, nobody named
        assert 'data-incident="gw-river/41"' in dom  # the fleet itself is open
        b.js(f"document.getElementById('fleet-token').value = {json.dumps(WANG + 'x')}")
        b.submit("document.getElementById('fleet-login').requestSubmit()")
        assert b.js("document.getElementById('login-error').textContent") == "令牌不正确。"
        login_shot = tmp_path / "fleet-login.png"  # looked at, not kept under docs/
        login_shot.write_bytes(base64.b64decode(b.call("Page.captureScreenshot", session=True)["data"]))
        assert not b.cookies()
        b.js(f"document.getElementById('fleet-token').value = {json.dumps(WANG)}")
        b.submit("document.getElementById('fleet-login').requestSubmit()")
        assert urllib.parse.urlparse(b.js("location.href")).path == "/"
        [cookie] = b.cookies()
        assert cookie["name"] == COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert b.js("document.cookie") == ""  # the page's scripts cannot read the token
        dom = b.html()
        assert 'data-user="wang"' in dom and "已登录：wang" in dom and 'id="fleet-login"' not in dom
        assert WANG not in dom
        for incident in ("gw-river/41", "gw-river/42", "gw-hill-2/7"):
            assert f'data-command-form="{incident}"' in dom
        assert "确认接单" in dom and "已到场" in dom and "添加备注" in dom and 'name="who"' not in dom
        assert f'data-command="{sent["id"]}" data-state="accepted"' in dom and "网关已执行" in dom
        assert f'data-command="{late["id"]}" data-state="rejected"' in dom and "事件状态不允许" in dom
        assert "添加备注 · wang" in b.text() and "确认接单 · li" in b.text()
        assert 'http-equiv="refresh"' not in dom or 'content=""' in dom
        shot = tmp_path / "fleet-commands.png"
        shot.write_bytes(
            base64.b64decode(b.call("Page.captureScreenshot", session=True, format="png")["data"])
        )
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        b.goto(view.url + "?lang=en")
        assert "logged in as wang" in b.text() and "done by the gateway" in b.text()
        b.submit("document.getElementById('logged-in').requestSubmit()")
        assert "log in to send commands" in b.text() and not b.cookies()
    finally:
        b.close()
    if os.environ.get("MW_UPDATE_SCREENSHOTS") == "1":
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SHOT)
