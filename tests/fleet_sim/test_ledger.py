"""The simulation's witness of what a gateway committed (tests/fleet_sim/sites.py): the trigger it adds to a
store before the gateway's first start keeps every fleet outbox row, also once the publisher deleted it on
the broker's PUBACK; a write rolled back leaves nothing; events/ rows are told from the retained ones. No
services: the outbox's own functions on a file, as the gateway's bridge and publisher call them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.fleet import outbox
from gateway.fleet.outbox import FleetOutbox, Owed
from gateway.incidents.store import IncidentStore
from tests.fleet_sim.sites import read_ledger, write_compound


def test_the_ledger_keeps_what_the_outbox_let_go(tmp_path: Path) -> None:
    c = write_compound(
        tmp_path, 0, broker="mqtt://127.0.0.1:1883", victoria="http://127.0.0.1:8428",
        receiver="json://127.0.0.1:9/staff", keepalive=5, heartbeat=5.0, poll=1.0,
    )  # fmt: skip
    IncidentStore(c.store).close()  # the gateway's own tables, added at its first start
    state = f"meterwatch/simco/{c.site_id}/incident/{c.gateway}/1"
    db = sqlite3.connect(c.store, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        outbox.enqueue(db, [Owed(c.events_topic, '{"v":1}', False), Owed(state, '{"v":1}', True)], 1.0, 100)
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")  # a round that failed to store owes nothing
        outbox.enqueue(db, [Owed(c.events_topic, '{"v":1}', False)], 2.0, 100)
        db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        outbox.enqueue(db, [Owed(c.events_topic, '{"v":1}', False), Owed(state, "", True)], 3.0, 100)
        db.execute("COMMIT")
    finally:
        db.close()
    box = FleetOutbox(c.store)
    try:
        rows = box.after(0, 100)
        assert [r.seq for r in rows] == [1, 2, 3, 4]  # the rolled-back row's seq went with it
        box.acked(r.seq for r in rows)  # the broker took them all: the outbox is empty
        epoch = box.epoch()
    finally:
        box.close()
    ledger = read_ledger(c)
    assert ledger.pending == 0 and ledger.dropped == 0 and ledger.epoch == epoch
    assert ledger.committed == {f"c01/gw-c01/{epoch}-1": 1, f"c01/gw-c01/{epoch}-3": 1}
    assert ledger.retained_rows == 2
