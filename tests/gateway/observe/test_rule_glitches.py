"""meterwatch_rule_glitches_total: the engine's glitch counters, read at scrape time through the incident
service that holds the engine (the IncidentManager)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_site
from gateway.core.types import Sample
from gateway.incidents.site_model import build_engine
from gateway.observe.metrics import Exported, make_registry
from rules.engine import Engine
from rules.model import Incident
from tests.helpers import REPO

SITE = REPO / "tests/cases/single-zero-pressure-reading-is-a-glitch-no-burst/site.yaml"
T0 = 1_772_416_800.0


class Incidents:
    """The incident service as the collector sees it: open incidents, and the engine it runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open_incidents(self) -> list[Incident]:
        return []


def _glitches(exported: Exported) -> dict[tuple[str, str], float] | None:
    text = generate_latest(make_registry(load_site(SITE), exported)).decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "meterwatch_rule_glitches":
            assert fam.type == "counter"
            return {
                (s.labels["device"], s.labels["rule"]): s.value
                for s in fam.samples
                if s.name == "meterwatch_rule_glitches_total"
            }
    return None


def test_glitches_are_counted_per_device_and_rule() -> None:
    engine = build_engine(load_site(SITE), start=T0)
    exported = Exported(incidents=Incidents(engine))
    assert _glitches(exported) == {}
    for i, bar in enumerate([3.0] * 12 + [0.0, 3.0, 3.0, 0.0, 3.0]):  # two lone 0 bar readings
        engine.feed(Sample("B1-pressure", T0 + i, {"pressure": bar}))
    assert _glitches(exported) == {
        ("B1-pressure", "water.burst"): 2.0,
        ("B1-pressure", "water.low_pressure"): 2.0,
    }


def test_no_engine_no_family() -> None:
    assert _glitches(Exported()) is None
