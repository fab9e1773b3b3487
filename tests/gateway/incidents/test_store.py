"""The incident store: transitions persisted and reloaded, ids continued after a restart, downtime in the
timeline, nothing resolved without fresh data, one transaction per batch, an append-only timeline.

The engine runs in virtual time here (the manager takes `now` from the test), so nothing sleeps.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Site, load_site
from gateway.core.types import Sample
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import GATEWAY_DOWN, Batch, IncidentStore, StoreError, StoreReader
from rules.model import IncidentChange
from tests.helpers import free_port

T0 = 1_760_000_000.0  # any fixed UTC instant

SITE = """\
site: {id: storetest, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 40, domains: [{id: B1-power, kind: power}]}
  - {id: B2, households: 30, domains: [{id: B2-power, kind: power}]}
devices:
  - {id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, source: mqtt,
     expected_interval: 1s}
  - {id: B2-main, building: B2, domain: B2-power, role: main_power, households: 30, source: mqtt,
     expected_interval: 1s}
rules:
  - {id: power.outage, kind: polyphase, check: outage, category: power_outage, severity: critical,
     match: {roles: [main_power]}, for: 2s, clear_for: 3s}
detection: {reopen_window: 10s}
incidents: {heartbeat: 5s}
"""


@pytest.fixture
def site(tmp_path: Path) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    return load_site(path)


def volts(device: str, ts: float, v: float) -> Sample:
    return Sample(device, ts, {"voltage_l1": v, "voltage_l2": v, "voltage_l3": v})


class Gateway:
    """The manager and its store, stepped the way the detector steps them (one write per round)."""

    def __init__(self, site: Site, db: Path, now: float) -> None:
        self.store = IncidentStore(db)
        self.mgr = IncidentManager.open(site, self.store, now)
        self.now = now

    def run(self, until: float, values: dict[str, float | None], step: float = 0.5) -> None:
        """Every device sends `values[device]` volts every `step` seconds (None: silent) until `until`."""
        while self.now < until:
            self.now = round(self.now + step, 3)
            for dev, v in values.items():
                if v is not None:
                    self.mgr.feed(volts(dev, self.now, v))
            self.mgr.tick(self.now)
            batch = self.mgr.take_batch(self.now)
            self.store.write(batch)
            self.mgr.committed(batch)

    def crash(self) -> None:
        self.store.close()  # no clean stop recorded: as after kill -9

    def stop(self) -> None:
        self.store.stop(self.now)
        self.store.close()


def test_transitions_persisted_and_reloaded_then_ids_continue(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    gw = Gateway(site, db, T0)
    gw.run(T0 + 5, {"B1-main": 230.0, "B2-main": 230.0})
    gw.run(T0 + 12, {"B1-main": 0.0, "B2-main": 230.0})
    [inc] = gw.mgr.open_incidents()
    assert (inc.category, inc.scope, inc.state) == ("power_outage", "domain:B1-power", "firing")
    alerts_before = {k: a.state for k, a in gw.mgr.engine.alerts.items()}
    assert alerts_before == {"power.outage|B1-main": "firing"}
    killed_at = gw.now
    gw.crash()

    reader = StoreReader(db)
    stored = reader.incidents("open")
    assert [(i.id, i.key, i.state) for i in stored] == [(inc.id, inc.key, "firing")]
    events = [e.event for e in reader.timeline(inc.id)]
    assert events[0] == "opened"

    # start again 120 s later: the same incident, the same alert state, the downtime on the timeline
    restart = killed_at + 120
    gw2 = Gateway(site, db, restart)
    assert [(i.id, i.key, i.state) for i in gw2.mgr.open_incidents()] == [(inc.id, inc.key, "firing")]
    assert {k: a.state for k, a in gw2.mgr.engine.alerts.items()} == alerts_before
    down = gw2.mgr.downtime
    assert down is not None and not down.clean_stop
    # the last heartbeat is at most one heartbeat interval (5 s) before the kill
    assert killed_at - 5 <= down.down_from <= killed_at
    assert down.down_to == restart
    [gap] = [e for e in reader.timeline(inc.id) if e.event == GATEWAY_DOWN]
    assert gap.ts == restart and not gap.notify
    assert gw2.mgr.local(down.down_from) in gap.detail and gw2.mgr.local(restart) in gap.detail
    assert "no clean stop" in gap.detail

    # fresh data clears it after clear_for; then a new outage elsewhere gets the next id, not a reused one
    gw2.run(restart + 6, {"B1-main": 230.0, "B2-main": 230.0})
    assert gw2.mgr.open_incidents() == []
    assert reader.incident(inc.id) is not None
    assert reader.incident(inc.id).state == "resolved"  # type: ignore[union-attr]
    gw2.run(restart + 40, {"B1-main": 230.0, "B2-main": 0.0})
    [inc2] = gw2.mgr.open_incidents()
    assert inc2.id == inc.id + 1 and inc2.scope == "domain:B2-power"
    gw2.stop()

    gw3 = Gateway(site, db, gw2.now + 1)
    assert gw3.mgr.downtime is not None and gw3.mgr.downtime.clean_stop
    assert [i.id for i in gw3.mgr.open_incidents()] == [inc2.id]
    assert [i.id for i in gw3.mgr.all_incidents(10)] == [inc2.id, inc.id]
    assert [e.event for e in reader.timeline(inc.id)][-1] == "resolved"
    gw3.crash()


def test_nothing_resolves_without_fresh_data_after_restart(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    gw = Gateway(site, db, T0)
    gw.run(T0 + 5, {"B1-main": 230.0, "B2-main": 230.0})
    gw.run(T0 + 12, {"B1-main": 0.0, "B2-main": 230.0})
    [inc] = gw.mgr.open_incidents()
    gw.crash()

    gw2 = Gateway(site, db, gw.now + 60)
    # B1's meter never answers again: minutes pass, far beyond clear_for, and nothing resolves
    gw2.run(gw2.now + 300, {"B1-main": None, "B2-main": 230.0}, step=1.0)
    assert inc.id in [i.id for i in gw2.mgr.open_incidents()]
    reader = StoreReader(db)
    stored = reader.incident(inc.id)
    assert stored is not None and stored.state == "firing"
    assert not [e for e in reader.timeline(inc.id) if e.event == "resolved"]
    assert not [c for c in reader.alert_log() if c.new == "resolved"]
    gw2.crash()


def test_a_failed_batch_writes_nothing(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    gw = Gateway(site, db, T0)
    gw.run(T0 + 5, {"B1-main": 230.0, "B2-main": 230.0})
    gw.run(T0 + 12, {"B1-main": 0.0, "B2-main": 230.0})
    [inc] = gw.mgr.open_incidents()
    changed = Batch(incidents={inc.id: inc})
    changed.incidents[inc.id].state = "recovering"
    # a timeline row that violates NOT NULL: the whole transaction, incident row included, rolls back
    changed.timeline.append(IncidentChange(gw.now, inc.id, "recovering", False, None))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        gw.store.write(changed)
    stored = StoreReader(db).incident(inc.id)
    assert stored is not None and stored.state == "firing"
    assert "recovering" not in [e.event for e in StoreReader(db).timeline(inc.id)]
    gw.crash()


def test_the_timeline_is_append_only(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    gw = Gateway(site, db, T0)
    gw.run(T0 + 12, {"B1-main": 0.0, "B2-main": 230.0})
    gw.crash()
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE timeline SET detail = 'rewritten'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM timeline")
    conn.close()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "incidents.sqlite"
    bad.write_bytes(b"this is not sqlite, it is a text file that someone put here\n" * 20)
    with pytest.raises(StoreError, match=r"incidents\.sqlite: cannot open the incident store"):
        IncidentStore(bad)


def test_run_with_a_broken_store_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    from bench.rules_live import write_live_site

    site = write_live_site(tmp_path, port=free_port())
    state = tmp_path / "var" / "livetest"
    state.mkdir(parents=True)
    (state / "incidents.sqlite").write_bytes(b"not a database " * 100)
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "meterwatch run: " in out.stderr
    assert f"{Path('var') / 'livetest' / 'incidents.sqlite'}: cannot open the incident store" in out.stderr
    assert "Traceback" not in out.stderr


def test_store_path_is_relative_to_the_site_file(tmp_path: Path) -> None:
    from gateway.app.detect import store_path

    default = tmp_path / "default.yaml"
    default.write_text(SITE, encoding="utf-8")
    assert store_path(load_site(default), tmp_path / "state") == tmp_path / "state" / "incidents.sqlite"
    (tmp_path / "conf").mkdir()
    custom = tmp_path / "conf" / "custom.yaml"
    custom.write_text(SITE.replace("incidents: {heartbeat: 5s}", "incidents: {path: db/inc.sqlite}"), "utf-8")
    assert store_path(load_site(custom), tmp_path / "state") == tmp_path / "conf" / "db" / "inc.sqlite"
