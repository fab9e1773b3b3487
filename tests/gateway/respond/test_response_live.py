"""Issue 9's acceptance, through the whole daemon: simulated meters over Modbus TCP, detection, the notice
policy, the dispatcher, the outbox and apprise to a local HTTP receiver (json://, standing in for the
robots) and a local SMTP server (mailto://).

- A power cut in B1 and B2: staff hear at once (Chinese), the on-call person is dispatched by the team's
  robot and by e-mail with the acknowledge and on-site links, the residents hear after the confirmation
  delay (English, with the hotline); B1's dispatch is acknowledged through the API and its chain stops,
  B2's is not and escalates to the backup; the all-clear follows the restoration. One staff target answers
  HTTP 500 and is retried while the other is not sent twice.
- A manual 002 (fire) incident from the API is dispatched and escalated like a detected one, and resolved
  by staff.
- A flapping outage sends its residents one notice and one all-clear; an outage inside a planned
  maintenance window sends its residents none.

Live site (bench/rules_live.py): poll 0.5 s, outage `for` 2 s, `clear_for` 3 s. Every wait is on an event
at the receiver or in the API, with generous time-outs; nothing here is a speed claim.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.config import load_site
from simulators.runner import SimulatorThread
from tests.fixtures.receiver import Receiver, Request
from tests.fixtures.smtp import SmtpServer
from tests.helpers import free_port, wait_until

TOKEN_ENV, TOKEN = "MW_TEST_RESPONSE_TOKEN", "response-test-token-4f9a1c"
ROSTER = """
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
    - {{after: {backup_after}, notify: [backup]}}
    - {{after: 1h, notify: [supervisor], target_missed: true}}
  repeat_every: 0s
"""
NOTIFY = """
notify:
  hotline: "400-800-1234"
  confirm_delay: {{power_outage: {confirm}}}
  verify_for: 2s
  retry_max: 1s
  links: {{base_url: "http://127.0.0.1:{http_port}"}}
  channels:
    - {{name: staff, url: "{staff}, {staff_down}", audiences: [staff], language: zh}}
    - {{name: team, url: "{team}", audiences: [oncall, backup, supervisor, manager], language: zh}}
    - {{name: wang-mail, url: "{mail}", audiences: ["person:wang"], language: zh}}
    - {{name: residents, url: "{residents}", audiences: [residents], language: en}}
{maintenance}
"""


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    return tmp_path


class ResponseSite(LiveSite):
    """LiveSite on a site file written here (the live site plus roster, notify and a token)."""

    def __init__(self, directory: Path, site_path: Path) -> None:
        self.directory = directory
        self.site_path = site_path
        self.site = load_site(site_path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")


def live_site(
    directory: Path,
    receiver: Receiver,
    smtp: SmtpServer,
    *,
    confirm: str = "2s",
    backup_after: str = "4s",
    maintenance: str = "",
) -> ResponseSite:
    http_port = free_port()
    extra = ROSTER.format(backup_after=backup_after) + NOTIFY.format(
        confirm=confirm,
        http_port=http_port,
        staff=receiver.url("json", "/staff"),
        staff_down=receiver.url("json", "/staff-down"),
        team=receiver.url("json", "/team"),
        mail=smtp.mailto("wang@example.org"),
        residents=receiver.url("json", "/residents"),
        maintenance=maintenance,
    )
    path = write_live_site(directory, http_port=http_port, http_tokens={"desk": TOKEN_ENV}, extra=extra)
    return ResponseSite(directory, path)


def text_of(r: Request) -> str:
    body = r.json()
    return f"{body['title']}\n{body['message']}"


def post(live: LiveSite, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        live.daemon.url + path,
        data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def incident_of(live: LiveSite, scope: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        found[:] = [
            i for i in live.daemon.api("/api/incidents?state=all")["incidents"] if i["scope"] == scope
        ]
        return bool(found)

    wait_until(listed, timeout=60, what=f"the incident of {scope}")
    return found[0]


def messages_about(receiver: Receiver, path: str, incident_id: int) -> list[str]:
    return [t for r in receiver.requests(path) if f"#{incident_id} " in (t := text_of(r))]


def test_power_cut_dispatch_ack_escalation_residents_and_all_clear(
    site_dir: Path, receiver: Receiver, smtp_server: SmtpServer
) -> None:
    receiver.fail("/staff-down", 500)
    # the residents' delay (25 s) ends after the escalation would be due (20 s): their notice is the
    # barrier showing that B1's acknowledged chain stayed quiet while B2's escalated
    live = live_site(site_dir, receiver, smtp_server, confirm="25s", backup_after="20s")
    with live:
        live.sim.world.cut_power("B1")
        live.sim.world.cut_power("B2")
        b1 = incident_of(live, "domain:B1-power")["id"]
        b2 = incident_of(live, "domain:B2-power")["id"]

        # staff at once, in Chinese; the on-call person by the team's robot and by e-mail, with the links
        wait_until(
            lambda: len(messages_about(receiver, "/staff", b1)) >= 1, timeout=60, what="B1 staff notice"
        )
        assert "停电" in messages_about(receiver, "/staff", b1)[0]
        wait_until(lambda: len(messages_about(receiver, "/team", b1)) >= 1, timeout=60, what="B1 dispatch")
        dispatch = messages_about(receiver, "/team", b1)[0]
        assert "[派单]" in dispatch and "王工" in dispatch and "13800000001" in dispatch, dispatch
        assert f"{live.daemon.url}/ack/" in dispatch and f"{live.daemon.url}/on-site/" in dispatch
        mails = smtp_server.wait_for(2, timeout=60)
        assert {m.rcpt_tos[0] for m in mails} == {"wang@example.org"}
        assert all("派单" in m.subject for m in mails), [m.subject for m in mails]
        assert "/ack/" in mails[0].text()

        # B1 is acknowledged through the API: its chain stops; B2's is not and reaches the backup
        view = post(live, f"/api/incidents/{b1}/ack")
        assert view["acked_by"] == "desk"
        wait_until(
            lambda: any("[升级" in t for t in messages_about(receiver, "/team", b2)),
            timeout=90,
            what="B2's escalation to the backup",
        )
        [escalation] = [t for t in messages_about(receiver, "/team", b2) if "[升级" in t]
        assert "李工" in escalation and "13800000002" in escalation

        # residents: one notice per building after the delay, in English, with the hotline
        notices = receiver.wait_for(2, "/residents", timeout=90)
        assert all("400-800-1234" in text_of(r) for r in notices)
        assert sorted("B1" in text_of(r) for r in notices) == [False, True]
        # by now B1's chain would have escalated too, had the acknowledgement not stopped it
        assert [t for t in messages_about(receiver, "/team", b1) if "[升级" in t] == []
        timeline = [e["event"] for e in live.daemon.api(f"/api/incidents/{b1}")["timeline"]]
        assert "dispatched" in timeline and "acknowledged" in timeline and "escalated" not in timeline

        # the failing staff target was retried; the good one had each notice once
        receiver.wait_for(2, "/staff-down", timeout=60)
        staff_texts = [text_of(r) for r in receiver.requests("/staff")]
        assert len(staff_texts) == len(set(staff_texts))

        # restoration: the all-clear to each building's residents, once
        live.sim.world.restore_power("B1")
        live.sim.world.restore_power("B2")
        residents = receiver.wait_for(4, "/residents", timeout=90)
        assert len({r.body for r in residents}) == 4
        titles = sorted(r.json()["title"] for r in residents[2:])
        assert titles == ["Power restored: B1", "Power restored: B2"], titles


def test_a_manual_fire_report_is_dispatched_escalated_and_resolved_by_staff(
    site_dir: Path, receiver: Receiver, smtp_server: SmtpServer
) -> None:
    live = live_site(site_dir, receiver, smtp_server, backup_after="3s")
    with live:
        opened = post(
            live,
            "/api/incidents",
            {"code": "002", "buildings": ["B2"], "title": "3楼楼道冒烟", "note": "住户来电"},
        )
        inc_id = opened["id"]
        wait_until(
            lambda: len(messages_about(receiver, "/team", inc_id)) >= 2, timeout=60, what="dispatch+esc"
        )
        dispatch, escalation = messages_about(receiver, "/team", inc_id)[:2]
        assert "[派单]" in dispatch and "3楼楼道冒烟" in dispatch and "王工" in dispatch
        assert "[升级" in escalation and "李工" in escalation
        staff = messages_about(receiver, "/staff", inc_id)
        assert staff and "3楼楼道冒烟" in staff[0]
        detail = live.daemon.api(f"/api/incidents/{inc_id}")
        assert detail["event_code"] == "002" and detail["severity"] == "critical"
        events = [e["event"] for e in detail["timeline"]]
        assert events[:2] == ["opened", "note"] and "dispatched" in events and "escalated" in events

        post(live, f"/api/incidents/{inc_id}/on-site")
        post(live, f"/api/incidents/{inc_id}/resolve", {"note": "误报：装修粉尘"})
        wait_until(lambda: len(messages_about(receiver, "/staff", inc_id)) >= 2, timeout=60, what="resolved")
        assert live.daemon.api(f"/api/incidents/{inc_id}")["state"] == "resolved"
        # nobody reads the meters' word on it: residents were never told of a hotline report
        assert receiver.count("/residents") == 0


def test_flapping_sends_one_notice_and_one_all_clear_and_maintenance_sends_none(
    site_dir: Path, receiver: Receiver, smtp_server: SmtpServer
) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    now = datetime.now(tz).replace(tzinfo=None, microsecond=0)
    window = (
        "  maintenance:\n"
        f"    - {{id: b2-works, start: '{(now - timedelta(hours=1)).isoformat()}', "
        f"end: '{(now + timedelta(hours=1)).isoformat()}', buildings: [B2], categories: [power_outage], "
        "note: 'transformer swap'}\n"
    )
    live = live_site(site_dir, receiver, smtp_server, maintenance=window, backup_after="1h")
    with live:
        world = live.sim.world
        # the window's advance notice goes out at once (it is already in force)
        [advance] = receiver.wait_for(1, "/residents", timeout=60)
        assert "transformer swap" in text_of(advance)

        world.cut_power("B2")
        b2 = incident_of(live, "domain:B2-power")["id"]
        world.cut_power("B1")
        b1 = incident_of(live, "domain:B1-power")["id"]
        receiver.wait_for(2, "/residents", timeout=60)  # B1's notice after the 2 s delay

        def state(i: int) -> str:
            return str(live.daemon.api(f"/api/incidents/{i}")["state"])

        for _ in range(2):  # B1 flaps: supply back, then gone again before it counts as restored
            world.restore_power("B1")
            wait_until(lambda: state(b1) == "recovering", timeout=60, what="B1 recovering")
            world.cut_power("B1")
            wait_until(lambda: state(b1) == "firing", timeout=60, what="B1 firing again")
        world.restore_power("B1")
        world.restore_power("B2")
        wait_until(lambda: state(b1) == "resolved" and state(b2) == "resolved", timeout=60, what="resolved")
        receiver.wait_for(3, "/residents", timeout=60)  # B1's all-clear after verify_for
        # staff heard of both resolutions: everything owed by then has been sent
        wait_until(
            lambda: len(messages_about(receiver, "/staff", b2)) >= 2, timeout=60, what="B2 resolved (staff)"
        )
        texts = [text_of(r) for r in receiver.requests("/residents")]
        assert len(texts) == 3, texts
        about_b1 = texts[1:]
        assert all("B1" in t and "B2" not in t for t in about_b1), about_b1
        planned = messages_about(receiver, "/staff", b2)[0]
        assert "计划维护期间（b2-works）" in planned, planned
