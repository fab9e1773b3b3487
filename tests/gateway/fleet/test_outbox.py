"""The fleet outbox on a real SQLite file: bounded (the oldest dropped and counted), sent in order, deleted
only when acknowledged, and its event ids stable; a notice's outcome is owed once however often the delivery
log is read."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from gateway.fleet import outbox
from gateway.fleet.bridge import NoticeEvents
from gateway.fleet.outbox import FleetOutbox, Owed
from gateway.fleet.topics import Topics, with_id
from gateway.respond import outbox as notices


def owed(n: int, start: int = 0) -> list[Owed]:
    return [Owed("t/events", json.dumps({"v": 1, "n": i}), False) for i in range(start, start + n)]


def write(path: Path, rows: list[Owed], bound: int) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        outbox.create(db)
        db.execute("BEGIN")
        dropped = outbox.enqueue(db, rows, 0.0, bound)
        db.execute("COMMIT")
        return dropped
    finally:
        db.close()


def test_bounded_oldest_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "incidents.sqlite"
    assert write(path, owed(60), 100) == 0
    box = FleetOutbox(path)
    first = box.after(0, 10)
    box.acked([r.seq for r in first])  # acknowledged rows leave; the bound counts what is left
    assert write(path, owed(90, 60), 100) == 40
    assert write(path, owed(30, 150), 100) == 30
    assert box.pending() == 100 and box.dropped() == 70
    rows = box.after(0, 1000)
    assert [json.loads(r.payload)["n"] for r in rows] == list(range(80, 180))  # the newest, in order
    box.close()


def test_ids_are_stable_and_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "incidents.sqlite"
    write(path, owed(3), 100)
    box = FleetOutbox(path)
    topics = Topics("acme", "s1", "gw")
    epoch = box.epoch()
    assert abs(epoch - time.time()) < 3600  # the second the outbox was made
    before = [with_id(r.payload, topics.event_id(box.epoch(), r.seq)) for r in box.after(0, 10)]
    again = [with_id(r.payload, topics.event_id(box.epoch(), r.seq)) for r in box.after(0, 10)]
    assert before == again  # a resend carries the same id
    assert json.loads(before[0]) == {"id": f"s1/gw/{epoch}-1", "v": 1, "n": 0}
    write(path, [], 100)  # the schema made again (a restart) keeps the epoch
    assert box.epoch() == epoch
    box.acked([1, 2, 3])
    write(path, owed(1, 3), 100)
    assert [r.seq for r in box.after(0, 10)] == [4]  # AUTOINCREMENT: an acknowledged id is never reused
    assert with_id("", "x") == b""  # a retained topic cleared stays empty
    box.close()


def test_a_notice_outcome_is_owed_once(tmp_path: Path) -> None:
    path = tmp_path / "incidents.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    notices.create(db)
    db.execute(
        "INSERT INTO outbox(key, owed_key, incident_id, stage, channel, audience, language, context, due_at,"
        " created_at, state, attempts)"
        " VALUES ('k1', 'o1', 7, 'staff_open', 'staff', 'staff', 'zh', '{}', 0, 0, 'partial', 1)"
    )
    db.execute("INSERT INTO deliveries VALUES ('k1', 'staff', 'json://x', 'failure', 1, 100.0, 'HTTP 500')")
    box = FleetOutbox(path)
    make = NoticeEvents(Topics("acme", "s1", "gw"))
    assert box.take_notices(make, 101.0, 100) == (1, 0)
    assert box.take_notices(make, 102.0, 100) == (0, 0)  # read again: nothing new owed
    db.execute("UPDATE outbox SET state = 'sent', attempts = 2 WHERE key = 'k1'")
    db.execute("UPDATE deliveries SET status = 'success', attempts = 2, at = 103.0")
    assert box.take_notices(make, 104.0, 100) == (1, 0)
    assert box.take_notices(make, 105.0, 100) == (0, 0)
    # nothing new: the log is read, nothing is written (an idle gateway's disk stays untouched)
    version = db.execute("PRAGMA data_version").fetchone()[0]
    assert box.take_notices(make, 106.0, 100) == (0, 0)
    assert db.execute("PRAGMA data_version").fetchone()[0] == version
    plan = " ".join(
        str(r[-1])
        for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT o.key FROM deliveries d JOIN outbox o ON o.key = d.notice_key"
            " WHERE d.at > ?",
            (0.0,),
        )
    )
    assert "fleet_deliveries_at" in plan, plan  # read by time through its index, not a scan
    got = [json.loads(r.payload) for r in box.after(0, 10)]
    assert [(g["state"], g["final"], g["attempts"]) for g in got] == [("failed", False, 1), ("sent", True, 2)]
    assert got[1]["incident"] == 7 and got[1]["channel"] == "staff" and got[1]["stage"] == "staff_open"
    box.close()
    db.close()
