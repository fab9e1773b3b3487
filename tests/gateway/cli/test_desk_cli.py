"""The staff commands (`meterwatch open / ack / on-site / note / eta / cause / resolve`, `maintenance add`,
`oncall [show] / set`) against the real daemon, through its HTTP API only.

The hotline story runs the installed `meterwatch` as a user does (a subprocess, SITE file argument, token in
MW_TOKEN); the refusals run the same typer app in this process (quicker; the daemon is still the real one,
in its own thread). Every check is on the command's output and on what the API then shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner, Result

from gateway.cli.main import app
from tests.fixtures.receiver import Receiver
from tests.gateway.web.desk_site import DESK, WANG, Api, DeskSite, desk_site, env_without_token
from tests.helpers import free_port

MW = Path(sys.executable).parent / "meterwatch"  # the console script of this environment


@pytest.fixture(scope="module")
def staff() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, staff: Receiver) -> Iterator[DeskSite]:
    with desk_site(tmp_path_factory.mktemp("desk-cli"), staff) as site:
        yield site


@pytest.fixture
def api(live: DeskSite) -> Api:
    return Api(live.url)


def mw(*args: str, token: str | None = DESK) -> subprocess.CompletedProcess[str]:
    env = env_without_token()
    if token is not None:
        env["MW_TOKEN"] = token
    return subprocess.run([str(MW), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def invoke(*args: str, token: str | None = DESK) -> Result:
    env: dict[str, str | None] = {"MW_TOKEN": token}  # None: unset for the command
    return CliRunner().invoke(app, list(args), env=env)


def refused(result: Result, *parts: str) -> str:
    """The one-line refusal of a command that exited 1 without output."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def local(delta: timedelta) -> str:
    """A local time of the live site (Asia/Shanghai) as the commands take it: 2026-12-01T18:00."""
    now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, second=0, microsecond=0)
    return (now + delta).isoformat(timespec="minutes")


def test_a_hotline_call_from_open_to_resolve(live: DeskSite, api: Api) -> None:
    site = str(live.site_path)
    opened = mw(
        "open",
        site,
        "--code",
        "002",
        "--building",
        "B1",
        "--title",
        "smoke in stairwell 2",
        "--note",
        "caller: flat 301",
    )
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.startswith("opened incident "), opened.stdout
    incident = int(opened.stdout.split()[2])
    assert api.incident(incident)["event_code"] == "002"

    acked = mw("ack", str(incident), site)
    assert acked.returncode == 0, acked.stderr
    assert f"acknowledged incident {incident} (manual)" in acked.stdout
    assert "by desk" in acked.stdout

    # the token may come as an option instead: then it is that token's name the timeline records
    there = mw("on-site", str(incident), site, "--token", WANG, token=None)
    assert there.returncode == 0, there.stderr
    assert "by wang-phone" in there.stdout

    assert mw("note", str(incident), "fire brigade on the way", site).returncode == 0
    eta = mw("eta", str(incident), "2030-12-01T18:00", site)
    assert eta.returncode == 0, eta.stderr
    assert "2030-12-01T18:00:00+08:00" in eta.stdout
    assert mw("cause", str(incident), "a pan left on the stove", site).returncode == 0
    resolved = mw("resolve", str(incident), site, "--note", "aired out, nobody hurt", "--json")
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout) == api.ok("GET", f"/api/incidents/{incident}/response")

    view = json.loads(resolved.stdout)
    assert view["acked_by"] == "desk" and view["on_site_by"] == "wang-phone"
    assert view["eta_at"] == "2030-12-01T18:00:00+08:00"
    assert view["cause"] == "a pan left on the stove"
    notes = [(n["who"], n["text"]) for n in view["notes"]]
    assert notes == [("desk", "caller: flat 301"), ("desk", "fire brigade on the way")]
    detail = api.incident(incident)
    assert detail["state"] == "resolved"
    assert ("resolved", "resolved by desk: aired out, nobody hurt") in [
        (e["event"], e["detail"]) for e in detail["timeline"]
    ]

    again = mw("ack", str(incident), site)  # a resolved incident is not acknowledged any more
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip() == f"meterwatch ack: incident {incident} is resolved"


def test_refusals_are_one_line_on_stderr_and_exit_1(live: DeskSite, api: Api) -> None:
    site = str(live.site_path)
    incident = api.open_manual(code="005", title="noise complaint", buildings=["B2"])

    refused(invoke("ack", str(incident), site, token=None), "no token", "MW_TOKEN", "--token")
    refused(
        invoke("ack", str(incident), site, token="not-a-configured-token-42"),
        "not one of http.tokens",
        "MW_TOKEN",
    )
    refused(invoke("ack", str(incident + 100_000), site), f"no incident {incident + 100_000}")
    refused(invoke("ack", "99999999999999999999", site), "no incident 99999999999999999999")
    refused(invoke("open", site, "--code", "002", "--building", "B9", "--title", "x"), "B9", "B1, B2")
    refused(invoke("open", site, "--code", "042", "--title", "x"), "unknown event code '042'")
    refused(invoke("eta", str(incident), "tomorrow evening", site), "eta:", "2026-05-10T09:00")
    refused(invoke("note", str(incident), "x" * 2001, site), "text: too long")
    refused(invoke("ack", str(incident), str(live.directory / "no-such-site.yaml")), "cannot read the file")
    nobody = f"http://127.0.0.1:{free_port()}"
    refused(invoke("ack", str(incident), "--url", nobody), f"cannot reach the daemon at {nobody}")
    assert api.ok("GET", f"/api/incidents/{incident}/response")["acked_at"] is None

    detected = api.detected_power_incident(live, "B2")
    try:
        refused(invoke("resolve", str(detected), site), "meterwatch resolve: ")
        assert api.incident(detected)["state"] != "resolved"
    finally:
        live.sim.world.restore_power("B2")


def test_maintenance_add(live: DeskSite) -> None:
    site = str(live.site_path)
    add = [
        "maintenance",
        "add",
        site,
        "--id",
        "b2-cable",
        "--start",
        "2030-03-01T09:00",
        "--end",
        "2030-03-01T17:00",
        "--building",
        "B2",
        "--note",
        "cable works",
    ]
    first = invoke(*add)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.strip() == (
        "maintenance window b2-cable declared: 2030-03-01T09:00 to 2030-03-01T17:00, B2"
    )
    assert invoke(*add).stdout == first.stdout  # a retry is the same window
    moved = [*add[:-2], "--note", "cable works, second part"]
    refused(invoke(*moved), "maintenance window 'b2-cable' exists already")
    refused(
        invoke(
            "maintenance",
            "add",
            site,
            "--id",
            "w",
            "--start",
            "2030-03-01T09:00",
            "--end",
            "2030-03-01T08:00",
        ),
        "must be after start",
    )


def test_oncall_show_and_set(live: DeskSite) -> None:
    site = str(live.site_path)
    shown = mw("oncall", site)  # `show` is the default
    assert shown.returncode == 0, shown.stderr
    assert "by the weekly roster" in shown.stdout
    assert "wang  Wang Wei  13800000001" in shown.stdout
    refused(invoke("oncall", site, token=None), "MW_TOKEN")

    refused(
        invoke(
            "oncall",
            "set",
            site,
            "--oncall",
            "nobody",
            "--start",
            local(timedelta(hours=-1)),
            "--end",
            local(timedelta(hours=1)),
        ),
        "nobody",
        "wang, li, zhao",
    )
    moved = invoke(
        "oncall",
        "set",
        site,
        "--oncall",
        "zhao",
        "--backup",
        "wang",
        "--start",
        local(timedelta(hours=-1)),
        "--end",
        local(timedelta(hours=1)),
    )
    assert moved.exit_code == 0, moved.stderr
    assert "by an override" in moved.stdout and "zhao  Zhao Lei  13800000003" in moved.stdout
    as_json = invoke("oncall", "show", "--url", live.url, "--json")
    assert as_json.exit_code == 0, as_json.stderr
    assert '"override": true' in as_json.stdout and '"id": "zhao"' in as_json.stdout
