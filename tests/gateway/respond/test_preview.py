"""`meterwatch notify preview`: the messages of a made-up or a real incident, printed; errors in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.cli.notify import incident_from_record, record_context
from gateway.config import load_site
from gateway.incidents.replay import incident_record
from gateway.respond.context import incident_context
from gateway.respond.model import Stage
from rules.model import IncidentState
from tests.gateway.respond.test_messages import HOTLINE, OPENED, incident, write_site
from tests.helpers import REPO, free_port


def meterwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_the_residents_notice_is_chinese_by_default(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    r = meterwatch(
        "notify", "preview", str(site), "--category", "power_outage", "--stage", "residents_notice"
    )
    assert r.returncode == 0, r.stderr
    assert "=== residents_notice [zh] ===" in r.stdout
    assert "【停电通知】1号楼" in r.stdout and "约96户受影响" in r.stdout
    assert HOTLINE in r.stdout and "预计" in r.stdout  # the example sets an expected restoration
    assert "[en]" not in r.stdout and "all_clear" not in r.stdout


def test_english_with_language_en_and_every_stage_without_stage(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    r = meterwatch("notify", "preview", str(site), "--category", "water_supply", "--language", "en")
    assert r.returncode == 0, r.stderr
    for stage in Stage:
        assert f"=== {stage.value} [en] ===" in r.stdout
    assert "Water outage: 1号楼" in r.stdout and "has had a water outage since" in r.stdout
    assert "Water restored: 1号楼" in r.stdout and "2 h 15 min" in r.stdout
    assert "domain:B1-water" in r.stdout  # the staff messages' scope
    assert "[zh]" not in r.stdout


def test_another_building(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    r = meterwatch("notify", "preview", str(site), "--category", "power_outage", "--building", "B2")
    assert r.returncode == 0, r.stderr
    assert "【停电通知】2号楼" in r.stdout and "约64户受影响" in r.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--category", "power_cut"], "unknown category 'power_cut'; expected one of "),
        (["--category", "power_outage", "--building", "B9"], "unknown building 'B9'; the site has B1, B2"),
        (["--category", "power_outage", "--language", "fr"], "unknown language 'fr'"),
        (["--category", "power_outage", "--stage", "notice"], "unknown stage 'notice'"),
        ([], "give either --category"),
    ],
)
def test_a_wrong_argument_is_one_line_and_exit_1(tmp_path: Path, args: list[str], says: str) -> None:
    r = meterwatch("notify", "preview", str(write_site(tmp_path)), *args)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert r.stderr.startswith("meterwatch notify preview: ")


def test_a_broken_template_is_its_file_and_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "tpl" / "zh").mkdir(parents=True)
    broken = tmp_path / "tpl" / "zh" / "residents_notice.j2"
    broken.write_text("title: x\n{{ site.nam }}\n", encoding="utf-8")
    site = write_site(tmp_path, extra="  templates_dir: tpl\n")
    r = meterwatch("notify", "preview", str(site), "--category", "power_outage")
    assert r.returncode == 1
    assert f"{broken.resolve()}:2: " in r.stderr and "nam" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_an_unreachable_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = meterwatch("notify", "preview", str(write_site(tmp_path)), "--incident", "3", "--url", url)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and f"cannot reach the daemon at {url}" in r.stderr, r.stderr


@pytest.fixture
def daemon() -> Iterator[str]:
    """A stand-in for the daemon's API: incident 17 (a power outage of B1), 404 for any other."""
    record = {**incident_record(incident("power_outage", "domain:B1-power"), "Asia/Shanghai"), "timeline": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/api/incidents/17"
            body = json.dumps(record if found else {"detail": "no incident"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_incident_from_the_daemon(tmp_path: Path, daemon: str) -> None:
    site = str(write_site(tmp_path))
    r = meterwatch("notify", "preview", site, "--incident", "17", "--url", daemon, "--language", "en")
    assert r.returncode == 0, r.stderr
    assert "Power cut: 1号楼" in r.stdout and "since 2 Mar 10:05" in r.stdout
    assert "#17" in r.stdout and "main meter B1-main reads no voltage on any phase" in r.stdout
    assert "expect it to be fixed" not in r.stdout  # a real incident has no expected restoration yet
    missing = meterwatch("notify", "preview", site, "--incident", "18", "--url", daemon)
    assert missing.returncode == 1 and f"the daemon at {daemon} has no incident 18" in missing.stderr


@pytest.mark.parametrize("state", [IncidentState.FIRING, IncidentState.RESOLVED])
def test_the_api_record_gives_the_same_context_as_the_incident(tmp_path: Path, state: IncidentState) -> None:
    site = load_site(write_site(tmp_path))
    inc = incident("power_outage", "domain:B1-power", state)
    record = json.loads(json.dumps(incident_record(inc, "Asia/Shanghai")))
    now = OPENED + 9000
    assert record_context(record, site, now) == incident_context(inc, site, now)
    assert incident_from_record(record).resolved_at == inc.resolved_at
    with pytest.raises(ValueError, match="not an incident record"):
        incident_from_record({"id": 1})
