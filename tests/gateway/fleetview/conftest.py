"""What the fleet view's tests share: `meterwatch fleet` as a child process (bench/fleet_view.py's
ViewProcess) against the real mosquitto of tests/fixtures/mosquitto.py, and waiting on its /api/fleet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.fleet_view import ViewProcess, gateway_msg, incident_msg, kpi_msg, publish_retained
from tests.fixtures.mosquitto import Mosquitto, mosquitto  # noqa: F401
from tests.helpers import wait_until

Views = Callable[..., ViewProcess]
TIMEOUT = 60.0  # generous: a time-out says the view never showed it, it is no speed claim


@pytest.fixture
def view_factory(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Callable[..., ViewProcess]]:  # noqa: F811
    made: list[ViewProcess] = []

    def make(*args: str) -> ViewProcess:
        v = ViewProcess(mosquitto.port, *args, log=tmp_path / f"view-{len(made)}.log")
        made.append(v)
        return v

    yield make
    for v in made:
        v.stop()


def shows(view: ViewProcess, predicate: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
    """The view's /api/fleet once `predicate` holds on it (polled; fails the test with `what`)."""

    def check() -> dict[str, Any] | None:
        state = view.api()
        return state if state is not None and predicate(state) else None

    return wait_until(check, TIMEOUT, 0.05, f"{what} (view log: {view.output()})")


def site_of(state: dict[str, Any], site: str) -> dict[str, Any] | None:
    return next((s for s in state["sites"] if s["site"] == site), None)


def retain(broker: Mosquitto, *messages: tuple[str, bytes]) -> None:
    publish_retained(broker.host, broker.port, list(messages))


def realistic_fleet(now: float, company: str = "acme") -> list[tuple[str, bytes]]:
    """Six sites as a company's morning might look: two with open incidents (one of them past the
    30-minute target and not acknowledged, one acknowledged and on site), one site of two gateways, KPIs
    some red; the offline gateway is left to the test (a real last will)."""
    c = company
    ok = {"informed": (10, 10), "response": (4, 4), "satisfaction": (9, 10)}
    return [
        gateway_msg(c, "riverside", "gw-river", "online", now - 5, devices=18),
        kpi_msg(c, "riverside", "gw-river", now - 600, ok),
        incident_msg(
            c,
            "riverside",
            "gw-river",
            41,
            "power_outage",
            "critical",
            ["B3"],
            now - 2700,
            now - 2640,
            households=120,
        ),
        incident_msg(c, "riverside", "gw-river", 42, "comm_fault", "minor", ["B1"], now - 300),
        gateway_msg(c, "hillview", "gw-hill-1", "online", now - 3, devices=24),
        gateway_msg(c, "hillview", "gw-hill-2", "online", now - 8, devices=16),
        kpi_msg(
            c,
            "hillview",
            "gw-hill-1",
            now - 600,
            {"informed": (6, 8), "response": (3, 5), "satisfaction": (5, 5)},
        ),
        kpi_msg(
            c,
            "hillview",
            "gw-hill-2",
            now - 600,
            {"informed": (2, 2), "response": (2, 2), "satisfaction": (4, 4)},
        ),
        incident_msg(
            c,
            "hillview",
            "gw-hill-2",
            7,
            "water_supply",
            "critical",
            ["C2", "C3"],
            now - 1500,
            now - 1440,
            now - 1000,
            now - 400,
            households=86,
            transition="on_site",
        ),
        gateway_msg(c, "lakeside", "gw-lake", "online", now - 12, devices=9),
        kpi_msg(c, "lakeside", "gw-lake", now - 600, ok),
        gateway_msg(c, "parkway", "gw-park", "online", now - 2, devices=30),
        kpi_msg(
            c,
            "parkway",
            "gw-park",
            now - 600,
            {"informed": (3, 5), "response": (2, 2), "satisfaction": (6, 8)},
        ),
        gateway_msg(c, "garden-court", "gw-garden", "online", now - 20, devices=12),
        kpi_msg(
            c,
            "garden-court",
            "gw-garden",
            now - 600,
            {"informed": (0, 0), "response": (0, 0), "satisfaction": (0, 0)},
        ),
    ]
