"""The live detector feeds a round's events with the correlator deferred and correlates once after them
(Engine.deferring, Engine.correlate): at thousands of devices answering at once, correlating after each
event was quadratic. Correlating once per group of events of one instant must give the incidents that
correlating after every event gives: checked on every recorded case (tests/cases) and the SKAB recordings.

One difference is expected and right: an incident's evidence text counts the devices dark at the instant it
was found. Correlating after each event finds it when the threshold's device of that instant comes in (12 of
20 dark); correlating after all of the instant's events counts every device dark at that instant (14 of 20).
The instant, the scope, the symptoms and everything else are the same.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import load_site
from gateway.incidents.replay import incident_record, run_replay
from gateway.incidents.trace import load_mapping, read_trace
from rules.engine import Engine
from rules.model import Transition
from tests.helpers import REPO
from tests.rules.test_wakeup import REPLAYED, SKAB, recorded_case


class Deferred(Engine):
    """Correlates only when ticked (the replay ticks after each instant's events), as a round does."""

    correlations = 0  # deferred correlator runs (an event had changed what it looks at)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deferring = True

    def tick(self, now: float) -> list[Transition]:
        type(self).correlations += self._dirty
        out = self.correlate()
        out.extend(super().tick(now))
        return out


def incidents(result: Any, tz: str) -> list[dict[str, Any]]:
    """Every incident as the API shows it, but its evidence text (see the module docstring)."""
    return [
        {k: v for k, v in incident_record(i, tz).items() if k != "evidence"}
        for i in result.incidents(include_merged=True)
    ]


@pytest.mark.parametrize("case", REPLAYED)
def test_recorded_cases_give_the_same_incidents(case: str) -> None:
    site, events, tail = recorded_case(case)
    tz = site.config.site.timezone
    each = run_replay(site, events, tail=tail)
    Deferred.correlations = 0
    once = run_replay(site, events, tail=tail, engine_type=Deferred)
    assert incidents(once, tz) == incidents(each, tz)
    assert Deferred.correlations > 0  # the correlator did run deferred


@pytest.mark.parametrize("recording", ["anomaly-free/anomaly-free.csv", "other/12.csv"])
def test_skab_recordings_give_the_same_incidents(recording: str) -> None:
    site = load_site(REPO / "deploy/examples/skab/site.yaml")
    tz = site.config.site.timezone
    trace = read_trace(SKAB / recording, tz, load_mapping(REPO / "deploy/examples/skab/mapping.yaml"))
    each = run_replay(site, trace.events, tail=600.0)
    once = run_replay(site, trace.events, tail=600.0, engine_type=Deferred)
    assert incidents(once, tz) == incidents(each, tz)
