"""Issue 10's first acceptance: an outage with a scripted acknowledgement gives a report whose times match the
scripted ones to the second, with charts that show the outage, made with the daemon stopped and no
time-series database anywhere.

The real daemon (bench/rules_live.py: simulated meters over Modbus TCP, detection, the notice policy, the
dispatcher, the outbox and apprise to a local HTTP receiver, the evidence keeper, HTTP with a token) sees
B1's power cut. The test acknowledges through the API, adds a note and the cause, reports on site, records
the moment around each call, restores the power and waits for the all-clear. While the daemon runs its
report routes answer (HTML with the console's cookie or the token, JSON with the token, nothing without).
Then the daemon stops and `meterwatch report` runs as a fresh process against its state dir: the report's
acknowledged and on-site times fall inside the moments around the calls that made them, to the second,
and are the ones the API answered; its first evidence follows the cut and its recovery the restoration;
the chart of B1-main is a PNG and the readings under it show 0 V between the cut and the restoration.

The HTML is looked at in Debian's headless chromium (words at the top, the met targets in green, the
chart's shaded incident); MW_UPDATE_SCREENSHOTS=1 also copies the page and its screenshot to docs/reports/.

Live site: poll 0.5 s, outage `for` 2 s, `clear_for` 3 s, residents after 2 s, all-clear 2 s after the
resolution. Every wait is on an event (the receiver, the API); nothing here is a speed claim.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib.image as mpimg
import numpy as np
import pytest

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.config import load_site
from simulators.runner import SimulatorThread
from tests.fixtures.receiver import Receiver
from tests.helpers import REPO, free_port, wait_until

TOKEN_ENV, TOKEN = "MW_TEST_REPORT_TOKEN", "report-test-token-7c2e91d4a5"
ZONE = ZoneInfo("Asia/Shanghai")
EXTRA = """
oncall:
  people:
    - {{id: wang, name: 王工, phone: "13800000001"}}
  shifts:
    - {{oncall: wang}}
notify:
  hotline: "400-800-1234"
  confirm_delay: {{power_outage: 2s}}
  verify_for: 2s
  retry_max: 1s
  links: {{base_url: "http://127.0.0.1:{http_port}"}}
  channels:
    - {{name: staff, url: "{staff}", audiences: [staff], language: zh}}
    - {{name: team, url: "{team}", audiences: [oncall, backup, supervisor, manager], language: zh}}
    - {{name: residents, url: "{residents}", audiences: [residents], language: zh}}
"""


class ReportSite(LiveSite):
    """LiveSite on a site file written here: the live site plus a roster, channels and a token."""

    def __init__(self, directory: Path, receiver: Receiver) -> None:
        http_port = free_port()
        extra = EXTRA.format(
            http_port=http_port,
            staff=receiver.url("json", "/staff"),
            team=receiver.url("json", "/team"),
            residents=receiver.url("json", "/residents"),
        )
        path = write_live_site(directory, http_port=http_port, http_tokens={"desk": TOKEN_ENV}, extra=extra)
        self.directory = directory
        self.site_path = path
        self.site = load_site(path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")


def call(
    url: str, method: str = "GET", body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request as any client sends it; (status, headers by lower-case name, body) whatever the
    status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = shutil.which("chromium")
DOCS = REPO / "docs" / "reports"


def post(live: LiveSite, path: str, body: dict[str, Any] | None = None) -> tuple[float, float, Any]:
    """POST to the write API; the wall-clock moments just before and just after, and the answer."""
    before = time.time()
    status, _, raw = call(live.daemon.url + path, "POST", body or {}, BEARER)
    after = time.time()
    assert status == 200, (path, status, raw)
    return before, after, json.loads(raw)


def second(ts: float) -> int:
    """The second a time falls in, as the report shows it (to the second, not rounded)."""
    return math.floor(ts)


def hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, ZONE).strftime("%H:%M:%S")


def polls(live: LiveSite) -> int:
    """B1-main's poll cycles so far (one every 0.5 s)."""
    return live.daemon.services.device_stats()["B1-main"].cycles


def timeline(live: LiveSite, incident_id: int) -> list[dict[str, Any]]:
    return list(live.daemon.api(f"/api/incidents/{incident_id}")["timeline"])


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest.mark.slow
def test_report_times_match_a_scripted_acknowledgement(tmp_path: Path, receiver: Receiver) -> None:
    live = ReportSite(tmp_path, receiver)
    with live:
        # a stretch of normal readings first: the evidence keeps them from its ring, the chart shows them
        wait_until(lambda: polls(live) >= 20, 60, what="ten seconds of B1-main's readings")
        cut = time.time()
        live.sim.world.cut_power("B1")
        found: list[dict[str, Any]] = []

        def listed() -> bool:
            found[:] = [
                i
                for i in live.daemon.api("/api/incidents?state=all")["incidents"]
                if i["scope"] == "domain:B1-power"
            ]
            return bool(found)

        wait_until(listed, timeout=60, what="B1's power incident")
        inc = found[0]["id"]
        wait_until(
            lambda: any(e["event"] == "dispatched" for e in timeline(live, inc)), 60, what="the dispatch"
        )
        # the scripted response, each moment bracketed by the clock readings around its call: acknowledged
        # once the line-powered B1-unit's silence has joined the incident, on site after the residents heard
        wait_until(
            lambda: any(e["event"] == "symptom" for e in timeline(live, inc)), 60, what="B1-unit's silence"
        )
        ack_from, ack_to, acked = post(live, f"/api/incidents/{inc}/ack")
        receiver.wait_for(1, "/residents", timeout=60)  # the residents' notice, after its 2 s
        post(live, f"/api/incidents/{inc}/note", {"text": "变压器跳闸，正在处理"})
        post(live, f"/api/incidents/{inc}/cause", {"cause": "B1 进线开关跳闸"})
        site_from, site_to, on_site = post(live, f"/api/incidents/{inc}/on-site")

        restore = time.time()
        live.sim.world.restore_power("B1")
        wait_until(
            lambda: live.daemon.api(f"/api/incidents/{inc}")["state"] == "resolved", 60, what="resolution"
        )
        receiver.wait_for(2, "/residents", timeout=60)  # and its all-clear
        after = polls(live)  # readings after the restoration (evidence.after), for the chart
        wait_until(lambda: polls(live) >= after + 10, 60, what="five more seconds of B1-main's readings")

        # the routes of the running daemon: nothing without a token, the page with one, JSON for programs
        base = live.daemon.url
        status, headers, page = call(f"{base}/incidents/{inc}/report")
        assert status == 401 and "需要登录" in page.decode(), status
        status, headers, page = call(f"{base}/incidents/{inc}/report", headers=BEARER)
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "img-src data:" in headers["content-security-policy"]
        text = page.decode()
        assert f"事件报告 #{inc}" in text and hms(acked["acked_ts"]) in text
        assert text.count('<img src="data:image/png;base64,') >= 1
        status, _, page = call(
            f"{base}/incidents/{inc}/report?lang=en", headers={"Cookie": f"mw_token={TOKEN}"}
        )
        assert status == 200 and f"Incident report #{inc}" in page.decode()
        status, _, raw = call(f"{base}/api/incidents/{inc}/report", headers=BEARER)
        assert status == 200
        served = json.loads(raw)
        assert served["summary"]["incident_id"] == inc
        assert call(f"{base}/api/incidents/{inc}/report")[0] == 401
        status, _, raw = call(f"{base}/api/incidents/999999/report", headers=BEARER)
        assert (status, json.loads(raw)) == (404, {"error": "no incident 999999"})
        status, _, raw = call(f"{base}/api/incidents/abc/report", headers=BEARER)
        assert status == 404 and "error" in json.loads(raw)
        status, _, page = call(f"{base}/incidents/abc/report", headers=BEARER)
        assert status == 404 and "不是 abc" in page.decode()
        # the monthly review (gateway/review/monthly.py) of this month, which holds the incident
        month = datetime.fromtimestamp(cut, ZONE).strftime("%Y-%m")
        status, headers, page = call(f"{base}/reports/{month}", headers=BEARER)
        assert status == 200 and headers["content-type"].startswith("text/html"), status
        assert headers["cache-control"] == "no-store"
        status, _, page = call(f"{base}/reports/{month}?lang=en", headers={"Cookie": f"mw_token={TOKEN}"})
        assert status == 200 and '<html lang="en"' in page.decode()
        status, headers, raw = call(f"{base}/reports/{month}.csv", headers=BEARER)
        assert status == 200 and headers["content-type"].startswith("text/csv")
        assert f'filename="review-{month}.csv"' in headers["content-disposition"]
        assert len(raw.decode("utf-8").strip().splitlines()) == 2  # the header and this incident
        assert call(f"{base}/reports/{month}")[0] == 401
        assert call(f"{base}/reports/{month}.csv")[0] == 401
        status, _, page = call(f"{base}/reports/2026-13", headers=BEARER)
        assert status == 400 and "2026-13" in page.decode(), status

    # the daemon is stopped: nothing answers on its port any more
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/healthz", timeout=2)

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | {TOKEN_ENV: TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", str(inc), str(live.site_path),
         "--state-dir", str(tmp_path / "state"), "-o", str(out), "--format", "md,html,json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / f"report-{inc}.json").read_text("utf-8"))
    rows = {r["kind"]: r for r in reversed(report["timeline"])}  # the first of each kind

    # the scripted moments, to the second
    ack_ts = rows["acknowledged"]["at"]["ts"]
    assert second(ack_from) <= second(ack_ts) <= second(ack_to)
    assert ack_ts == acked["acked_ts"] and rows["acknowledged"]["detail"] == "by desk"
    on_site_ts = rows["on_site"]["at"]["ts"]
    assert second(site_from) <= second(on_site_ts) <= second(site_to)
    assert on_site_ts == on_site["on_site_ts"]
    first = report["summary"]["first_evidence"]["ts"]
    assert cut <= first <= cut + 5, (cut, first)  # the first poll after the cut (every 0.5 s)
    assert restore <= rows["recovering"]["at"]["ts"] <= restore + 5
    assert rows["resolved"]["at"]["ts"] >= rows["recovering"]["at"]["ts"] + 3  # clear_for
    # each shown as the site's local time to that second
    for kind in ("acknowledged", "on_site", "first_evidence", "resolved"):
        ts = rows[kind]["at"]["ts"]
        assert rows[kind]["at"]["at"] == datetime.fromtimestamp(second(ts), ZONE).isoformat()

    md = (out / f"report-{inc}.md").read_text("utf-8")
    assert f"| {hms(ack_ts)} | 确认接单 | by desk |" in md
    assert f"| {hms(on_site_ts)} | 到场 | by desk |" in md
    assert "| 原因 | B1 进线开关跳闸 |" in md
    html = (out / f"report-{inc}.html").read_text("utf-8")
    assert hms(ack_ts) in html and hms(on_site_ts) in html

    # the targets, from those moments
    targets = {t["key"]: t for t in report["targets"]}
    dispatched = rows["dispatched"]["at"]["ts"]
    assert targets["acknowledge"]["seconds"] == pytest.approx(ack_ts - dispatched)
    assert targets["acknowledge"]["met"] is True
    assert targets["on_site"]["seconds"] == pytest.approx(on_site_ts - dispatched)
    assert targets["inform"]["met"] is True  # residents heard within 15 min
    # the outage lasted until supply came back (the recovery the resolution ended), not the resolution,
    # which waits clear_for of fresh data on top
    back = [r["at"]["ts"] for r in report["timeline"] if r["kind"] == "recovering"][-1]
    assert targets["outage"]["seconds"] == pytest.approx(back - first)
    notices = [r for r in report["timeline"] if r["kind"] == "notice"]
    stages = {n["notice"]["stage"] for n in notices}
    assert {"staff_open", "dispatch", "residents_notice", "all_clear"} <= stages, stages
    assert all(n["notice"]["state"] == "sent" for n in notices)

    # the charts show the outage: B1-main's phases at 0 V from the cut until the power came back (the
    # incident goes recovering later: when B1-unit, powered by the same supply, answers again too)
    series = {(s["device"], s["quantity"]): s["points"] for s in report["evidence"]}
    volts = series[("B1-main", "voltage_l1")]
    during = [v for t, v in volts if first <= t < restore]
    assert during and max(during) < 10, ("B1-main did not read 0 V through the outage", during)
    assert any(v > 180 for t, v in volts if t < cut), "no reading before the cut"
    assert any(v > 180 for t, v in volts if t > restore), "no reading after the restoration"
    png = out / f"report-{inc}-B1-main.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 800 and height > 300
    assert f"![B1-main（B1）](report-{inc}-B1-main.png)" in md

    # the page in a browser: words at the top, the incident's red band and the met targets' green
    assert CHROMIUM is not None, "Debian's chromium is not installed (scripts/bootstrap installs it)"
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1000,4400",
         (out / f"report-{inc}.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    img = mpimg.imread(shot)[:, :, :3]
    assert img.shape[:2] == (4400, 1000)

    def share(hex_colour: str, pixels: Any = img) -> float:
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return float(np.mean(np.all(np.abs(pixels - rgb) < 0.04, axis=2)))

    assert float(np.mean(img[:400].sum(axis=2) < 1.0)) > 0.005, "no words at the top of the page"
    assert share("#dcfce7") > 0.0001, "no green 'met' badge"
    chart = mpimg.imread(png)[:, :, :3]
    # the incident's span: #fecaca at 35 % over white
    assert share("#fef0f0", chart) > 0.02, "no shaded incident in the chart"
    if os.environ.get("MW_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / f"report-{inc}.html", DOCS / "incident-example.html")
        shutil.copyfile(shot, DOCS / "incident-example.png")
