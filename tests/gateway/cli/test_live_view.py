"""The live view lists the open incidents under the readings, in both the rich table and the plain text."""

from __future__ import annotations

from rich.console import Console

from gateway.cli.live import LiveView
from gateway.config import load_site
from gateway.core.bus import Bus
from rules.model import Incident
from tests.helpers import REPO

EXAMPLE = REPO / "deploy/examples/compound.yaml"


class OpenIncidents:
    def __init__(self, incidents: list[Incident]) -> None:
        self.incidents = incidents

    def open_incidents(self) -> list[Incident]:
        return list(self.incidents)


def outage() -> Incident:
    return Incident(
        id=7, key="power_outage/domain:B1-power", category="power_outage", scope="domain:B1-power",
        title="power outage: supply domain B1-power (building B1)", severity="critical", event_code="003",
        audiences=["staff"], households=96, state="firing", opened_at=1_700_000_000.0,
        first_evidence_at=1_700_000_000.0, updated_at=1_700_000_000.0,
        symptoms={"B1-main": ["power.outage"], "B1-pump": ["absence"]},
    )  # fmt: skip


def test_open_incidents_are_listed_under_the_readings() -> None:
    view = LiveView.attach(load_site(EXAMPLE), Bus(), plain=True)
    assert view.incident_lines() == []
    view.incidents = OpenIncidents([outage()])
    (line,) = view.incident_lines()
    assert line.startswith("#7 firing")
    assert "power outage: supply domain B1-power" in line
    assert "households=96" in line and "symptoms=B1-main,B1-pump" in line
    console = Console(record=True, width=200)
    console.print(view.render())
    text = console.export_text()
    assert "open incidents: 1" in text and "#7 firing" in text and "B1-main" in text


def test_without_detection_there_is_no_incident_panel() -> None:
    view = LiveView.attach(load_site(EXAMPLE), Bus(), plain=True)
    console = Console(record=True, width=200)
    console.print(view.render())
    assert "open incidents" not in console.export_text()
