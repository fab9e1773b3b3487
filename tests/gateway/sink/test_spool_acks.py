"""Deferred deletes: an ack that ends with a chunk forgets its points at once (stats, peeks, bounds) and the
next transaction deletes the rows (one commit per batch); with no append to carry them they get their own
commit after ACK_DEFER seconds, at an expire round and at close. A crash before that resends those
batches (the store overwrites identical points) and loses nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.sink import spool as spool_module
from gateway.sink.spool import ROW_OVERHEAD, Spool


def lines(start: int, n: int) -> list[str]:
    return [f"power,device=d v={i:05d}.0 {1_700_000_000_000 + i}" for i in range(start, start + n)]


def row_bytes() -> int:
    return len(lines(0, 1)[0]) + ROW_OVERHEAD


def rows_in_file(path: Path) -> list[tuple[int, int]]:
    """(first, n) of the chunks a second connection sees: what is committed."""
    db = sqlite3.connect(path)
    try:
        return [(int(a), int(b)) for a, b in db.execute("SELECT first, n FROM chunks ORDER BY first")]
    finally:
        db.close()


def test_an_ack_forgets_at_once_and_the_next_append_deletes_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 5))
    sp.append(lines(5, 5))
    first = sp.peek_chunks(5)
    commits = sp.stats.commits
    assert sp.ack(first[-1].last) == 5
    assert sp.stats.commits == commits  # no commit of its own
    assert sp.stats.points == 5 and sp.stats.bytes == 5 * row_bytes() and sp.stats.acked == 5
    assert [p.line for c in sp.peek_chunks(100) for p in c.pending()] == lines(5, 5)
    assert rows_in_file(path) == [(1, 5), (6, 5)]  # still in the file: deleted by the next transaction
    sp.release()
    sp.append(lines(10, 2))
    assert rows_in_file(path) == [(6, 5), (11, 2)]
    assert sp.ack(first[-1].last) == 0  # acknowledged already
    sp.close()
    again = Spool(path, max_bytes=10**9, max_age=1e9)
    assert again.stats.points == 7 and [c.first for c in again.peek_chunks(100)] == [6, 11]
    again.close()


def test_with_no_append_the_deletes_are_committed_after_ack_defer_at_expire_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "ACK_DEFER", 0.0)
    path = tmp_path / "s.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    for i in range(4):
        sp.append(lines(10 * i, 10))
    sp.ack(sp.peek_chunks(10)[-1].last)  # deferred; the next ack finds it due
    assert rows_in_file(path)[0] == (1, 10)
    sp.ack(sp.peek_chunks(10)[-1].last)
    assert [r[0] for r in rows_in_file(path)] == [21, 31]
    sp.ack(sp.peek_chunks(10)[-1].last)
    assert sp.expire() == 0  # nothing too old; the round commits the deletes
    assert [r[0] for r in rows_in_file(path)] == [31]
    sp.ack(sp.peek_chunks(10)[-1].last)
    sp.close()
    assert rows_in_file(path) == []


def test_a_crash_before_the_delete_resends_the_batch_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 5))
    sp.append(lines(5, 5))
    sp.ack(sp.peek_chunks(5)[-1].last)
    # a crash now: the file is as committed (no close, no purge)
    crashed = Spool(path, max_bytes=10**9, max_age=1e9)
    assert [p.line for c in crashed.peek_chunks(100) for p in c.pending()] == lines(0, 10)
    crashed.close()


def test_acknowledged_rows_are_not_counted_as_dropped_by_the_byte_bound(tmp_path: Path) -> None:
    row = row_bytes()
    sp = Spool(tmp_path / "s.sqlite", max_bytes=10 * row, max_age=1e9)
    sp.append(lines(0, 6))
    sp.ack(sp.peek_chunks(6)[-1].last)  # deferred: still in the file
    sp.append(lines(6, 8))  # 8 points fit the bound once the 6 acknowledged are gone
    assert sp.stats.dropped["bytes"] == 0 and sp.stats.points == 8
    sp.append(lines(14, 4))  # 12 > 10: the 2 oldest unacknowledged go
    assert sp.stats.dropped["bytes"] == 2
    assert [p.line for c in sp.peek_chunks(100) for p in c.pending()] == lines(8, 10)
    sp.close()


def test_an_ack_inside_a_chunk_commits_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 4))
    sp.append(lines(4, 6))
    sp.ack(sp.peek_chunks(4)[-1].last)  # deferred
    assert sp.ack(7) == 3  # inside the second chunk: split, and the deferred delete goes with it
    assert rows_in_file(path) == [(8, 3)]
    assert [p.line for p in sp.peek(100)] == lines(7, 3)
    sp.close()
