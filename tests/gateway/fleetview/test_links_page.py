"""A compound of two shards with an incident of one cause on both, on the fleet page in headless Chromium:
one site card listing its shards, the linked group ('same cause: T1') with each shard's incident and its
elapsed time against the target, in Chinese and English. The screenshot is the morning of test_page.py
plus this compound; MW_UPDATE_SCREENSHOTS=1 copies it to docs/screenshots/fleet.png."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.fleet_view import kpi_msg
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleetview.conftest import Views, realistic_fleet, retain, shows, site_of
from tests.gateway.fleetview.test_links import linked_incident, shard_gateway
from tests.gateway.fleetview.test_page import SHOT, chromium
from tests.gateway.fleetview.test_view import vanish_with_a_last_will

SITE = "sunrise-park"


def compound(now: float) -> list[tuple[str, bytes]]:
    """Sunrise Park: shard north (B1, B2) and shard south (B3, B4), transformer T1 feeding B2 and B3 cut
    14 minutes ago; both gateways see their part of it."""
    ok = {"informed": (5, 5), "response": (3, 3), "satisfaction": (7, 8)}
    return [
        shard_gateway(SITE, "gw-north", "north", ["B1", "B2"], at=now - 4),
        shard_gateway(SITE, "gw-south", "south", ["B3", "B4"], at=now - 6),
        kpi_msg("acme", SITE, "gw-north", now - 600, ok),
        kpi_msg("acme", SITE, "gw-south", now - 600, ok),
        linked_incident(SITE, "gw-north", 12, ["B2-power", "T1"], now - 860, shard="north",
                        dispatched_at=now - 840),
        linked_incident(SITE, "gw-south", 5, ["B3-power", "T1"], now - 850, shard="south",
                        dispatched_at=now - 830),
    ]  # fmt: skip


def linked(state: dict[str, Any]) -> Any:
    site = site_of(state, SITE)
    return site is not None and len(site["links"]) == 1 and len(site["shards"]) == 2


def test_a_compound_with_linked_incidents_in_chromium(
    tmp_path: Path, mosquitto: Mosquitto, view_factory: Views
) -> None:
    now = time.time()
    retain(mosquitto, *realistic_fleet(now), *compound(now))
    vanish_with_a_last_will(mosquitto, "acme", "eastgate", "gw-east")
    view = view_factory()
    shows(view, lambda s: linked(s) and s["totals"]["gateways_offline"] == 1, "the compound and its link")
    shot = tmp_path / "fleet.png"
    dom = chromium(view.url, tmp_path, screenshot=shot)
    card = dom.split(f'data-site="{SITE}"', 1)[1].split("</section>", 1)[0]
    assert '<div class="shards" data-shards="2">' in card and "园区 · 2个分区" in card
    assert (
        'data-shard="north"><b>north</b> B1、B2' in card and 'data-shard="south"><b>south</b> B3、B4' in card
    )
    group = card.split('data-link="T1"', 1)[1]
    assert "同一原因：T1 · 供电 · 2个分区受影响" in group
    assert 'data-linked="gw-north/12"' in group and 'data-linked="gw-south/5"' in group
    assert "已 14分钟 / 目标 30分钟" in group  # each shard's elapsed time against the target
    # both incidents are still listed with their own state, each marked with its link
    assert 'data-incident="gw-north/12"' in card and 'data-incident="gw-south/5"' in card
    assert card.count('class="pill linked" data-link="T1"') == 2
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    en = chromium(view.url + "?lang=en", tmp_path)
    assert "same cause: T1 · power · 2 shards affected" in en and "compound · 2 shards" in en
    if os.environ.get("MW_UPDATE_SCREENSHOTS") == "1":
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SHOT)
