"""The fleet view against what a real gateway publishes: the live site of tests/gateway/fleet (simulated
meters over Modbus TCP, the real daemon with a `fleet:` section, a real mosquitto). Its outage shows on the
view (and on a view started during it, from the retained topics alone) as an open critical power incident
of building B1, and goes when the power is back; the gateway's own
state and KPI snapshot show; a gateway stopped shows offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import COMPANY, GATEWAY, TOKEN, TOKEN_ENV, fleet_site
from tests.gateway.fleetview.conftest import Views, shows, site_of

SITE = "livetest"


def outage(state: dict[str, Any]) -> dict[str, Any] | None:
    site = site_of(state, SITE)
    found = [i for i in site["incidents"] if i["kind"] == "power_outage"] if site else []
    return found[0] if found else None


def test_the_view_shows_a_real_gateway_and_its_outage(
    tmp_path: Path, mosquitto: Mosquitto, view_factory: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    view = view_factory("--company", COMPANY)
    site = fleet_site(tmp_path, mosquitto)
    with site:
        state = shows(
            view,
            lambda s: (
                (x := site_of(s, SITE))
                and x["gateways"]
                and x["kpis"]
                and x["gateways"][0]["devices_up"] == 3
            ),
            "the live gateway online with its KPI snapshot",
        )
        live = site_of(state, SITE)
        assert live is not None and live["company"] == COMPANY
        gw = live["gateways"][0]
        assert (gw["gateway"], gw["state"], gw["offline"]) == (GATEWAY, "online", False)
        assert gw["heartbeat"] == 1.0 and gw["buildings"] == ["B1", "B2"]
        assert set(live["kpis"]) == {"informed", "response", "satisfaction"}
        assert live["incidents"] == []

        site.sim.world.cut_power("B1")
        # the first symptom may open another incident first (merged into the outage later): wait for this one
        state = shows(view, lambda s: outage(s) is not None, "the outage's incident")
        inc = outage(state)
        assert inc is not None
        assert (inc["gateway"], inc["kind"], inc["severity"], inc["buildings"]) == (
            GATEWAY,
            "power_outage",
            "critical",
            ["B1"],
        )
        assert not inc["late"] and not inc["acknowledged"]
        page = view.get("").decode()
        assert "停电" in page and f'data-incident="{GATEWAY}/{inc["id"]}"' in page

        # a view started now, from the retained topics only, shows the same gateway and incident
        late = view_factory()
        seen = shows(
            late,
            lambda s: (o := outage(s)) is not None and o["id"] == inc["id"] and site_of(s, SITE)["kpis"],  # type: ignore[index]
            "the late view with the outage",
        )
        late_site = site_of(seen, SITE)
        assert late_site is not None
        assert [g["gateway"] for g in late_site["gateways"]] == [GATEWAY]

        site.sim.world.restore_power("B1")
        shows(
            view, lambda s: (x := site_of(s, SITE)) and not x["incidents"], "the incident gone once resolved"
        )
    # the daemon stopped cleanly: its state says offline
    state = shows(
        view, lambda s: (x := site_of(s, SITE)) and x["gateways"][0]["offline"], "the stopped gateway offline"
    )
    assert site_of(state, SITE)["gateways"][0]["state"] == "offline"  # type: ignore[index]
