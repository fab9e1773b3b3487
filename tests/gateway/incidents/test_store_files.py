"""The incident store's file (issue 8, item 6): a 0-byte file is a warning that history is gone, damaged
pages a clean error that leaves the file alone, and a clean stop leaves everything in the main file, so a
copy of the .sqlite alone is a complete backup."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway.incidents.store import Batch, IncidentStore, StoreError
from rules.model import Incident, IncidentState

T0 = 1_760_000_000.0


def incident(i: int) -> Incident:
    return Incident(
        id=i, key=f"k/{i}", category="power_outage", scope="building:B1", title="x" * 2000, severity="major",
        event_code="003", audiences=["staff"], households=1, state=IncidentState.RESOLVED, opened_at=T0,
        first_evidence_at=T0, updated_at=T0, resolved_at=T0 + 1,
    )  # fmt: skip


def filled(path: Path, n: int = 200) -> None:
    store = IncidentStore(path)
    store.write(Batch(incidents={i: incident(i) for i in range(1, n + 1)}))
    store.stop(T0)
    store.close()


def test_an_empty_file_is_a_warning_that_history_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "incidents.sqlite"
    path.touch()
    with caplog.at_level(logging.WARNING):
        store = IncidentStore(path)
    store.close()
    assert any("0 bytes" in r.getMessage() and "history" in r.getMessage() for r in caplog.records)


def test_damaged_pages_are_one_clear_error_and_the_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "incidents.sqlite"
    filled(path)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for p in range(3, len(data) // page, 2):  # scribble over every other page past the schema
        data[p * page + 8 : p * page + 200] = b"\xa5" * 192
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="damaged") as err:
        IncidentStore(path)
    assert "move it aside" in str(err.value) and str(path) in str(err.value)
    assert path.read_bytes() == before


def test_after_a_clean_stop_a_copy_of_the_file_alone_is_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "incidents.sqlite"
    store = IncidentStore(path)
    store.write(Batch(incidents={i: incident(i) for i in range(1, 51)}))
    store.stop(T0)  # the process has not exited yet (nor closed the store): the copy is taken now
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    copy = tmp_path / "backup" / "incidents.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)  # the .sqlite only, no -wal beside it
    store.close()
    db = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT data FROM incidents").fetchall()
    finally:
        db.close()
    assert len(rows) == 50 and json.loads(rows[0][0])["category"] == "power_outage"
