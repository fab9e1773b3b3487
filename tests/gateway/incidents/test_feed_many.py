"""IncidentManager.feed_many, the live detector's round: each event correlated at its own time until the
round has run the correlator CORRELATE_PER_ROUND times, then the rest deferred to one run after them.
Thousands of devices answering at once (a start, a site's power back) cost one run, not one each; a round of
ordinary size gives the incidents and times that feeding one event at a time gives."""

from __future__ import annotations

from pathlib import Path

from gateway.config import load_site
from gateway.core.types import Sample
from gateway.incidents.manager import CORRELATE_PER_ROUND, IncidentManager
from gateway.incidents.replay import incident_record
from gateway.incidents.store import IncidentStore
from rules.model import IncidentChange
from tests.gateway.incidents.test_store import SITE, T0, volts

METERS = 200


def many_meters(tmp_path: Path) -> IncidentManager:
    meters = "\n".join(
        f"  - {{id: U{i}, building: B1, domain: B1-power, role: unit_power, households: 1, source: mqtt,"
        f" expected_interval: 1s}}"
        for i in range(METERS)
    )
    text = f"""site: {{id: many, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: {METERS}, domains: [{{id: B1-power, kind: power}}]}}
devices:
{meters}
"""
    tmp_path.mkdir()
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return IncidentManager.open(load_site(path), IncidentStore(tmp_path / "incidents.sqlite"), T0)


def first_answers() -> list[Sample]:
    return [volts(f"U{i}", T0 + 1 + i / 1000, 230.0) for i in range(METERS)]


def test_many_devices_answering_at_once_cost_a_bounded_number_of_correlations(tmp_path: Path) -> None:
    one_by_one = many_meters(tmp_path / "a")
    for s in first_answers():
        one_by_one.feed(s)
    assert one_by_one.engine.correlations >= METERS  # each first answer may move a root

    batched = many_meters(tmp_path / "b")
    batched.feed_many(first_answers())
    assert batched.engine.correlations <= CORRELATE_PER_ROUND + 1
    assert not batched.engine.deferring
    assert batched.engine.corr.answering == one_by_one.engine.corr.answering


def test_an_ordinary_round_gives_the_incidents_and_times_of_one_event_at_a_time(tmp_path: Path) -> None:
    def site(d: Path) -> IncidentManager:
        d.mkdir()
        (d / "site.yaml").write_text(SITE, encoding="utf-8")
        return IncidentManager.open(load_site(d / "site.yaml"), IncidentStore(d / "incidents.sqlite"), T0)

    each, rounds = site(tmp_path / "each"), site(tmp_path / "rounds")
    timeline: dict[str, list[IncidentChange]] = {"each": [], "rounds": []}
    events = []
    for k in range(1, 121):  # a minute at 0.5 s: B1's main meter loses its voltage at 20 s, back at 45 s
        t = T0 + k / 2
        events += [volts("B1-main", t, 0.0 if 40 <= k < 90 else 230.0), volts("B2-main", t, 230.0)]
    # rounds of 8 events (2 s: a backlog), ticked after each as the detector does; the voltage comes back
    # in the middle of one, so its incident's recovery has a time of its own inside the round
    for i in range(0, len(events), 8):
        chunk = events[i : i + 8]
        for ev in chunk:
            each.feed(ev)
        rounds.feed_many(chunk)
        each.tick(chunk[-1].ts)
        rounds.tick(chunk[-1].ts)
        timeline["each"] += each.take_batch(chunk[-1].ts).timeline
        timeline["rounds"] += rounds.take_batch(chunk[-1].ts).timeline
    want = [incident_record(i, "Asia/Shanghai") for i in each.engine.incidents.values()]
    got = [incident_record(i, "Asia/Shanghai") for i in rounds.engine.incidents.values()]
    assert want and got == want
    assert any(r["resolved_at"] for r in got)  # the outage was found and resolved
    # every step of the incidents' timelines at the same time (the recovery inside a round too)
    assert [(c.incident, c.event, c.ts) for c in timeline["rounds"]] == [
        (c.incident, c.event, c.ts) for c in timeline["each"]
    ]
    assert "recovering" in {c.event for c in timeline["each"]}
