"""The fleet page in headless Chromium (Debian's, installed by scripts/bootstrap; a missing one fails the
test): the DOM after load has every site, the incidents, the offline gateway and the red KPIs; a
screenshot of a realistic morning (six sites, two with open incidents, one past the 30-minute target, one
gateway offline by its last will, some KPIs red). docs/screenshots/fleet.png is this morning plus a compound
of two shards with linked incidents: test_links_page.py makes it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleetview.conftest import Views, realistic_fleet, retain, shows
from tests.gateway.fleetview.test_view import vanish_with_a_last_will
from tests.helpers import REPO

CHROMIUM = shutil.which("chromium")
SHOT = REPO / "docs" / "screenshots" / "fleet.png"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)
DESK = (1280, 760)  # the fleet view is a wall or desk screen, not a phone


def chromium(url: str, tmp: Path, screenshot: Path | None = None) -> str:
    if CHROMIUM is None:  # a missing browser fails the test, it never skips it
        pytest.fail("Debian's chromium is not installed (scripts/bootstrap: apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=2000"]
    if screenshot is not None:
        args += [f"--screenshot={screenshot}", f"--window-size={DESK[0]},{DESK[1]}"]
    r = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_the_fleet_page_in_chromium(tmp_path: Path, mosquitto: Mosquitto, view_factory: Views) -> None:
    retain(mosquitto, *realistic_fleet(time.time()))
    vanish_with_a_last_will(mosquitto, "acme", "eastgate", "gw-east")
    view = view_factory()
    shows(
        view,
        lambda s: (
            s["totals"]["sites"] == 6 and s["totals"]["incidents"] == 3 and s["totals"]["gateways_offline"]
        ),
        "the fleet",
    )
    shot = tmp_path / "fleet.png"
    dom = chromium(view.url, tmp_path, screenshot=shot)
    for site in ("riverside", "hillview", "eastgate", "lakeside", "parkway", "garden-court"):
        assert f'data-site="{site}"' in dom
    for incident in ("gw-river/41", "gw-river/42", "gw-hill-2/7"):
        assert f'data-incident="{incident}"' in dom
    assert (
        'class="inc late"' in dom and "超过30分钟响应目标" in dom
    )  # riverside's outage, past target, not acknowledged
    assert "已到场" in dom  # hillview's water incident, on site
    assert 'class="pill bad gateway-offline" data-gateway="gw-east"' in dom
    assert 'data-kpi="informed" data-ok="False"' in dom and 'data-kpi="response" data-ok="True"' in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    en = chromium(view.url + "?lang=en", tmp_path)
    assert "Fleet overview" in en and "past the 30 min response target" in en
