"""The live daemon does not hold every incident it ever saw: once an incident is resolved longer than the
reopen window (nothing can change it any more) and the store holds its last state, the engine drops it.
Found while looking for what grows in a long-running gateway (bench/soak.py): every past incident stayed in
the engine and the manager's written-state map, about 2 KB each, forever. The store, the API and the ids
are unaffected.

The engine runs in virtual time (the test steps the manager as the detector does), so nothing sleeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Site, load_site
from gateway.core.types import Sample
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import IncidentStore, StoreReader

T0 = 1_760_000_000.0
REOPEN = 10.0

SITE = f"""\
site: {{id: forgettest}}
buildings:
  - {{id: B1, households: 40, domains: [{{id: B1-power, kind: power}}]}}
devices:
  - {{id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, source: mqtt,
     expected_interval: 1s}}
rules:
  - {{id: power.outage, kind: polyphase, check: outage, category: power_outage, severity: critical,
     match: {{roles: [main_power]}}, for: 2s, clear_for: 3s}}
detection: {{reopen_window: {REOPEN:g}s}}
incidents: {{heartbeat: 5s}}
"""


@pytest.fixture
def site(tmp_path: Path) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    return load_site(path)


class Gateway:
    """The manager and its store, stepped the way the detector steps them (one write per round)."""

    def __init__(self, site: Site, db: Path, now: float) -> None:
        self.store = IncidentStore(db)
        self.mgr = IncidentManager.open(site, self.store, now)
        self.now = now

    def run(self, seconds: float, volts: float, step: float = 1.0) -> None:
        until = self.now + seconds
        while self.now < until:
            self.now += step
            self.mgr.feed(Sample("B1-main", self.now, {f"voltage_l{i}": volts for i in (1, 2, 3)}))
            self.mgr.tick(self.now)
            batch = self.mgr.take_batch(self.now)
            self.store.write(batch)
            self.mgr.committed(batch)

    def outage(self) -> int:
        """B1 dark until an incident is open, then lit until it resolves; the incident's id."""
        self.run(6, 0.0)
        [inc] = self.mgr.open_incidents()
        self.run(6, 230.0)
        assert self.mgr.open_incidents() == []
        return inc.id

    def stop(self) -> None:
        self.store.stop(self.now)
        self.store.close()


def test_a_settled_incident_leaves_memory_not_the_store(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    gw = Gateway(site, db, T0)
    gw.run(5, 230.0)
    first = gw.outage()
    # within the reopen window it stays: a recurrence now reopens it
    assert first in gw.mgr.engine.incidents
    gw.run(2 * REOPEN, 230.0)
    assert first not in gw.mgr.engine.incidents
    stored = StoreReader(db).incident(first)
    assert stored is not None and stored.state == "resolved"

    # a recurrence after the window is a new incident with the next id, not a reopening of the old one
    second = gw.outage()
    assert second == first + 1
    incs = {i.id: i for i in StoreReader(db).incidents("all", 10)}
    assert set(incs) == {first, second}
    assert incs[second].reopen_count == 0
    assert [i.id for i in gw.mgr.all_incidents()] == [second, first]
    gw.stop()


def test_a_recurrence_within_the_reopen_window_still_reopens(site: Site, tmp_path: Path) -> None:
    gw = Gateway(site, tmp_path / "incidents.sqlite", T0)
    gw.run(5, 230.0)
    first = gw.outage()
    again = gw.outage()  # resolved 6 s ago at most: inside the 10 s window
    assert again == first
    assert gw.mgr.engine.incidents[first].reopen_count == 1
    gw.stop()


def test_memory_holds_a_bounded_number_of_incidents_however_many_happened(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    gw = Gateway(site, db, T0)
    gw.run(5, 230.0)
    ids = []
    for _ in range(12):
        ids.append(gw.outage())
        gw.run(2 * REOPEN, 230.0)
        # at most the one incident still inside its reopen window
        assert len(gw.mgr.engine.incidents) <= 1
        assert len(gw.mgr._written) <= 1
    assert ids == list(range(ids[0], ids[0] + 12))
    assert len(StoreReader(db).incidents("all", 100)) == 12
    gw.stop()

    # a restart loads the store and keeps only what can still change; ids go on from the store's highest
    gw2 = Gateway(site, db, gw.now + 60)
    assert gw2.mgr.engine.incidents == {}
    gw2.run(5, 230.0)
    assert gw2.outage() == ids[-1] + 1
    gw2.stop()


def test_an_open_incident_is_never_forgotten(site: Site, tmp_path: Path) -> None:
    gw = Gateway(site, tmp_path / "incidents.sqlite", T0)
    gw.run(5, 230.0)
    gw.run(6 * REOPEN, 0.0)  # dark for six reopen windows
    [inc] = gw.mgr.open_incidents()
    assert inc.id in gw.mgr.engine.incidents
    assert gw.mgr.engine.settled_incidents(gw.now + 1e6) == []
    gw.stop()
