"""Drills (issue 10, item 4), through the whole daemon: `meterwatch drill` -> POST /api/drills -> the desk
opens a drill incident that the real notice policy, dispatcher, outbox and apprise (json:// to a local
receiver) handle like a real one: staff hear at once, the on-call person is dispatched with signed links,
nobody acknowledges so the backup is called, the ack link acknowledges, staff record on site and resolve.
Every message that reaches the receiver starts with the drill mark, title and body, in Chinese and English;
residents hear nothing unless review.drills_notify_residents, and then their notices are marked too (and
the all-clear asks no rating). The API, the console and the public building page tell a drill apart.

Live site (bench/rules_live.py): two buildings, the simulated meters polled every 0.5 s. Every wait is on
an event at the receiver or in the API, with generous time-outs; nothing here is a speed claim.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.cli.main import app
from gateway.config import load_site
from gateway.respond.desk_api import DRILL_SCENARIOS
from gateway.respond.messages import DRILL_LINE, DRILL_MARK, Messages, drill_sample, sample_context
from gateway.respond.model import Stage
from simulators.runner import SimulatorThread
from tests.fixtures.receiver import Receiver, Request
from tests.helpers import free_port

TOKEN_ENV, TOKEN = "MW_TEST_DRILL_TOKEN", "drill-test-token-6c2e90ab41"
SITE_EXTRA = """
oncall:
  people:
    - {{id: wang, name: 王工, phone: "13800000001"}}
    - {{id: li, name: 李工, phone: "13800000002"}}
    - {{id: zhang, name: 张主管}}
  shifts:
    - {{oncall: wang, backup: li}}
  supervisor: zhang
  escalation:
    - {{after: 0s, notify: [oncall]}}
    - {{after: 3s, notify: [backup]}}
    - {{after: 1h, notify: [supervisor], target_missed: true}}
  repeat_every: 0s
notify:
  hotline: "400-800-1234"
  confirm_delay: {{power_outage: 1s}}
  verify_for: 1s
  retry_max: 1s
  links: {{base_url: "http://127.0.0.1:{http_port}"}}
  channels:
    - {{name: staff, url: "{staff}", audiences: [staff], language: zh}}
    - {{name: team, url: "{team}", audiences: [oncall, backup, supervisor, manager], language: en}}
    - {{name: residents, url: "{residents}", audiences: [residents], language: zh}}
review: {{drills_notify_residents: {residents_too}}}
"""


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


class DrillSite(LiveSite):
    def __init__(self, directory: Path, receiver: Receiver, *, residents_too: bool = False) -> None:
        http_port = free_port()
        extra = SITE_EXTRA.format(
            http_port=http_port,
            staff=receiver.url("json", "/staff"),
            team=receiver.url("json", "/team"),
            residents=receiver.url("json", "/residents"),
            residents_too="true" if residents_too else "false",
        )
        path = write_live_site(directory, http_port=http_port, http_tokens={"desk": TOKEN_ENV}, extra=extra)
        self.directory = directory
        self.site_path = path
        self.site = load_site(path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")


def call(
    live: LiveSite, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    """(status, answer) of one request; the answer is JSON when it is, else the text."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(live.daemon.url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode("utf-8")


def ok(live: LiveSite, method: str, path: str, body: Any = None) -> Any:
    status, answer = call(live, method, path, body)
    assert status in (200, 201), f"{method} {path} -> {status} {answer}"
    return answer


def title_body(r: Request) -> tuple[str, str]:
    body = r.json()
    return str(body["title"]), str(body["message"])


def about(receiver: Receiver, path: str, incident_id: int) -> list[tuple[str, str]]:
    return [tb for r in receiver.requests(path) if f"#{incident_id} " in (tb := title_body(r))[0]]


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"MW_TOKEN": ""})


def outbox_audiences(live: LiveSite, incident_id: int) -> list[str]:
    """The audiences owed a notice about the incident: the outbox rows are written with the transition
    that owes them, so this is what will ever be sent (the receiver may not have it yet)."""
    db = sqlite3.connect(f"file:{live.directory / 'state' / 'incidents.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT audience FROM outbox WHERE incident_id = ?", (incident_id,)).fetchall()
    finally:
        db.close()
    return sorted({str(a) for (a,) in rows})


def assert_marked(messages: list[tuple[str, str]], language: str) -> None:
    mark = DRILL_MARK[language]
    for title, body in messages:
        assert title.startswith(mark), f"title not marked as a drill: {title!r}"
        assert body.startswith(DRILL_LINE[language]), f"body not marked as a drill: {body[:80]!r}"


# ---------------------------------------------------------------------------------------------------------


def test_a_drill_is_dispatched_escalated_acknowledged_and_resolved_marked_and_residents_hear_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    with DrillSite(tmp_path, receiver) as live:
        # bad input is a clear 400 that opens nothing; no token is 401
        status, answer = call(live, "POST", "/api/drills", {"scenario": "meteor"})
        assert status == 400 and "unknown drill scenario 'meteor'" in answer["error"], answer
        assert all(name in answer["error"] for name in DRILL_SCENARIOS), answer
        status, answer = call(live, "POST", "/api/drills", {"scenario": "fire", "buildings": ["B9"]})
        assert status == 400 and "B9" in answer["error"] and "B1" in answer["error"], answer
        status, answer = call(live, "POST", "/api/drills", {"scenario": "fire"}, token=None)
        assert status == 401, answer
        status, answer = call(live, "POST", "/api/drills", {"scenario": "fire", "when": "now"})
        assert status == 400 and "when: unknown field" in answer["error"], answer
        assert ok(live, "GET", "/api/incidents?state=all")["incidents"] == []
        bad = run_cli("drill", "meteor", "--url", live.daemon.url, "--token", TOKEN)
        assert bad.exit_code == 1 and "unknown scenario 'meteor'" in bad.output, bad.output

        # the staff command opens it
        opened = run_cli(
            "drill", "power_outage", "--building", "B1", "--url", live.daemon.url, "--token", TOKEN
        )
        assert opened.exit_code == 0, opened.output
        found = re.search(r"opened as incident (\d+)", opened.output)
        assert found, opened.output
        drill = int(found.group(1))

        # the on-call person is dispatched with links; nobody acknowledges: the backup is called (3 s)
        receiver.wait(
            lambda _: len(about(receiver, "/team", drill)) >= 2, timeout=60, what="dispatch + escalation"
        )
        dispatch, escalation = about(receiver, "/team", drill)[:2]
        assert "[dispatch]" in dispatch[0] and "王工" in dispatch[1] and "13800000001" in dispatch[1], (
            dispatch
        )
        assert "[escalation" in escalation[0] and "李工" in escalation[1], escalation
        receiver.wait(lambda _: len(about(receiver, "/staff", drill)) >= 1, timeout=60, what="staff notice")

        # the dispatch's own ack link acknowledges it, as the person it was sent to
        link = re.search(r"http://127\.0\.0\.1:\d+/ack/[A-Za-z0-9_-]+", dispatch[1])
        assert link, dispatch[1]
        req = urllib.request.Request(link.group(0), data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        view = ok(live, "POST", f"/api/incidents/{drill}/on-site")
        assert view["acked_by"] == "wang" and view["on_site_by"] == "desk", view
        assert view["dispatched_ts"] <= view["acked_ts"] <= view["on_site_ts"], view

        # the API, the console and the public page tell it apart while it is open
        [listed] = ok(live, "GET", "/api/incidents?state=open")["incidents"]
        assert listed["id"] == drill and listed["drill"] is True and listed["category"] == "power_outage"
        status, console = call(live, "GET", "/")
        assert status == 200 and '<span class="badge drill">演练</span>' in console, console[:2000]
        assert 'id="open-count">0<' in console and 'id="drill-count">演练 1<' in console
        status, building = call(live, "GET", "/b/B1", token=None)
        assert status == 200 and "供电正常" in building and "停电中" not in building
        # /metrics counts it apart: the gateway's own alerts and Grafana annotations never see a drill
        with urllib.request.urlopen(live.daemon.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "meterwatch_drills_open 1.0" in metrics
        assert f'incident_id="{drill}"' not in metrics

        # staff resolve it; staff hear of it
        ok(live, "POST", f"/api/incidents/{drill}/resolve", {"note": "drill over"})
        receiver.wait(lambda _: len(about(receiver, "/staff", drill)) >= 2, timeout=60, what="staff resolved")

        # measured as a real one: the timeline has every step at the times the response view reports
        detail = ok(live, "GET", f"/api/incidents/{drill}")
        events = {e["event"]: e["ts"] for e in detail["timeline"]}
        for step in ("opened", "dispatched", "escalated", "acknowledged", "on_site", "resolved"):
            assert step in events, detail["timeline"]
        assert events["acknowledged"] == view["acked_ts"] and events["on_site"] == view["on_site_ts"]
        assert detail["drill"] is True and detail["state"] == "resolved"

        # every message marked, title and body, in each channel's language
        staff = [title_body(r) for r in receiver.requests("/staff")]
        team = [title_body(r) for r in receiver.requests("/team")]
        assert len(staff) >= 2 and len(team) >= 2
        assert_marked(staff, "zh")
        assert_marked(team, "en")
        # residents: nothing owed at all, although their 1 s delay passed long before the escalation
        owed = outbox_audiences(live, drill)
        assert {"staff", "oncall", "backup"} <= set(owed), owed
        assert not [a for a in owed if a.startswith(("residents", "utility"))], owed
        assert receiver.count("/residents") == 0


def test_with_drills_notify_residents_residents_get_marked_notices_and_no_rating_link(
    tmp_path: Path, receiver: Receiver
) -> None:
    with DrillSite(tmp_path, receiver, residents_too=True) as live:
        fire = ok(live, "POST", "/api/drills", {"scenario": "fire", "buildings": ["B1"]})
        assert fire["drill"] is True and fire["scenario"] == "fire"
        power = ok(live, "POST", "/api/drills", {"scenario": "power_outage", "buildings": ["B2"]})["id"]
        [notice] = receiver.wait_for(1, "/residents", timeout=60)
        title, body = title_body(notice)
        assert title.startswith("【演练】【停电通知】") and "B2" in title, title
        assert body.startswith(DRILL_LINE["zh"]), body
        ok(live, "POST", f"/api/incidents/{power}/resolve", {})
        ok(live, "POST", f"/api/incidents/{fire['id']}/resolve", {})
        residents = receiver.wait_for(2, "/residents", timeout=60)
        all_clear = title_body(residents[1])
        assert all_clear[0].startswith("【演练】【恢复供电】"), all_clear
        assert all_clear[1].startswith(DRILL_LINE["zh"]), all_clear
        assert "/r/" not in all_clear[1], "a drill's all-clear must not ask for a rating"
        # the fire drill is no supply outage: residents were never owed a notice of it
        receiver.wait(
            lambda _: len(about(receiver, "/staff", fire["id"])) >= 2, timeout=60, what="fire resolved"
        )
        assert "residents:B1" not in outbox_audiences(live, fire["id"])
        assert receiver.count("/residents") == 2
        assert_marked([title_body(r) for r in receiver.requests("/staff")], "zh")


# ---------------------------------------------------------------------------------------------------------


def test_the_mark_is_added_by_rendering_so_a_sites_own_template_cannot_forget_it(tmp_path: Path) -> None:
    for language in ("zh", "en"):
        folder = tmp_path / language
        folder.mkdir()
        (folder / "dispatch.j2").write_text("title: GO #{{ incident.id }}\nplease go\n", encoding="utf-8")
    messages = Messages(tmp_path)
    assert messages.check() == []
    for language in ("zh", "en"):
        real = messages.render(Stage.DISPATCH, language, sample_context(Stage.DISPATCH))
        assert real.title == "GO #42" and real.body == "please go"
        drill = messages.render(Stage.DISPATCH, language, drill_sample(Stage.DISPATCH))
        sep = "" if language == "zh" else " "
        assert drill.title == f"{DRILL_MARK[language]}{sep}GO #42"
        assert drill.body == f"{DRILL_LINE[language]}\nplease go"
        # every stage of the shipped templates, marked once
        for stage in Stage:
            if stage == Stage.DIGEST:
                continue
            r = Messages().render(stage, language, drill_sample(stage))
            assert r.title.startswith(DRILL_MARK[language]) and r.title.count(DRILL_MARK[language]) == 1
            assert r.body.startswith(DRILL_LINE[language]) and r.body.count(DRILL_LINE[language]) == 1


def test_a_digest_is_marked_only_when_every_item_is_a_drill() -> None:
    m = Messages()
    mark = DRILL_MARK["zh"]
    drills = {
        "items": [{"title": f"{mark}[派单] #1", "body": "b"}, {"title": f"{mark}[升级] #1", "body": "b"}]
    }
    mixed = {"items": [{"title": f"{mark}[派单] #1", "body": "b"}, {"title": "[派单] #2", "body": "b"}]}
    assert m.render(Stage.DIGEST, "zh", drills).title.startswith(mark)
    mixed_out = m.render(Stage.DIGEST, "zh", mixed)
    # a real notice inside must never read as a drill
    assert not mixed_out.title.startswith(mark) and not mixed_out.body.startswith(mark)
    assert not m.render(Stage.DIGEST, "zh", {"items": []}).title.startswith(mark)
