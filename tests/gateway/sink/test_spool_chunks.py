"""The spool's rows are chunks (a batch's lines in one row): the sender reads whole chunks, per-point ids stay
stable and are never reused, a chunk is split where an ack or a peek ends inside it, a line holding a
newline stays one point, and a spool file from before chunks (a row per point) is converted at open with
nothing lost, reordered or sent twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.sink.spool import ROW_OVERHEAD, Buffer, MemoryBuffer, Spool


def lines(start: int, n: int) -> list[str]:
    return [f"power,device=d v={i:05d}.0 {1_700_000_000_000 + i}" for i in range(start, start + n)]


def body_lines(buf: Buffer, limit: int = 10**6) -> list[str]:
    return [p.line for c in buf.peek_chunks(limit) for p in c.pending()]


def make(kind: str, tmp_path: Path) -> Buffer:
    if kind == "spool":
        return Spool(tmp_path / "s.sqlite", max_bytes=10**9, max_age=1e9)
    return MemoryBuffer(max_bytes=10**9, max_age=1e9)


@pytest.mark.parametrize("kind", ["spool", "memory"])
def test_chunks_are_the_appended_batches_as_request_bodies(kind: str, tmp_path: Path) -> None:
    buf = make(kind, tmp_path)
    buf.append(lines(0, 3))
    buf.append(lines(3, 4))
    chunks = buf.peek_chunks(1000)
    assert b"\n".join(c.body for c in chunks) == "\n".join(lines(0, 7)).encode()
    assert sum(c.n for c in chunks) == 7
    assert [p.id for c in chunks for p in c.pending()] == [p.id for p in buf.peek(1000)]
    assert buf.ack(chunks[-1].last) == 7 and buf.stats.points == 0


def test_peek_chunks_takes_whole_chunks_up_to_the_limit(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite", max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 6))
    sp.append(lines(6, 6))
    assert [c.n for c in sp.peek_chunks(10)] == [6]  # the second would pass the limit: it waits
    assert [c.n for c in sp.peek_chunks(12)] == [6, 6]
    sp.release()
    first = sp.peek_chunks(4)  # one chunk alone over the limit: split, its first 4 points go
    assert [c.n for c in first] == [4] and first[0].pending()[-1].line == lines(3, 1)[0]
    sp.ack(first[-1].last)
    assert body_lines(sp) == lines(4, 8)


def test_an_ack_inside_a_chunk_keeps_the_rest_with_its_ids(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 10))
    ids = [p.id for p in sp.peek(10)]
    assert sp.ack(ids[3]) == 4  # e.g. a split refused batch settled only its first half
    rest = sp.peek(10)
    assert [p.id for p in rest] == ids[4:] and [p.line for p in rest] == lines(4, 6)
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD
    assert sp.stats.points == 6 and sp.stats.bytes == 6 * row
    sp.close()
    again = Spool(path, max_bytes=10**9, max_age=1e9)
    assert [p.id for p in again.peek(10)] == ids[4:]
    assert again.stats.bytes == 6 * row


def test_ids_are_never_reused_not_even_after_the_spool_emptied_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 5))
    last = sp.peek(5)[-1].id
    sp.ack(last)
    sp.close()
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(5, 2))
    assert [p.id for p in sp.peek(5)] == [last + 1, last + 2]


def test_a_line_holding_a_newline_stays_one_point(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite", max_bytes=10**9, max_age=1e9)
    odd = "power,device=a\nb v=1.0 1"
    sp.append([lines(0, 1)[0], odd, lines(2, 1)[0]])
    assert sp.stats.points == 3
    assert [p.line for p in sp.peek(10)] == [lines(0, 1)[0], odd, lines(2, 1)[0]]
    assert [p.line for c in sp.peek_chunks(10) for p in c.pending()] == [lines(0, 1)[0], odd, lines(2, 1)[0]]


OLD_SCHEMA = (
    "CREATE TABLE points ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, enq REAL NOT NULL, nbytes INTEGER NOT NULL, line TEXT NOT NULL)"
)


def old_spool(path: Path, n: int, acked: int) -> None:
    """A spool file as the sink wrote it before chunks: a row per point; the first `acked` were sent."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    for i, line in enumerate(lines(0, n)):
        db.execute(
            "INSERT INTO points (enq, nbytes, line) VALUES (?, ?, ?)",
            (1000.0 + i // 4, len(line.encode()) + ROW_OVERHEAD, line),
        )
    db.execute("DELETE FROM points WHERE id <= ?", (acked,))
    db.close()


def test_a_spool_from_before_chunks_is_converted_and_sent_in_order(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    old_spool(path, 12, acked=5)
    sp = Spool(path, max_bytes=10**9, max_age=1e9, clock=lambda: 2000.0)
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD
    assert sp.stats.points == 7 and sp.stats.bytes == 7 * row
    assert sp.stats.oldest_enqueued == 1001.0  # the enqueue times are kept (the age bound still holds)
    pending = sp.peek(100)
    assert [p.id for p in pending] == list(range(6, 13))  # the old ids: nothing resent, nothing skipped
    assert [p.line for p in pending] == lines(5, 7)
    sp.release()
    sp.append(lines(12, 3))
    chunks = sp.peek_chunks(100)
    assert b"\n".join(c.body for c in chunks) == "\n".join(lines(5, 10)).encode()
    assert chunks[-1].last == 15  # new ids follow the old ones
    sp.close()
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "points" not in tables


def test_a_converted_spool_never_reuses_an_id_the_old_one_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    old_spool(path, 9, acked=9)  # everything sent: the table is empty, its sequence is at 9
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    assert sp.stats.points == 0
    sp.append(lines(9, 1))
    assert [p.id for p in sp.peek(1)] == [10]


def test_the_byte_bound_ends_inside_a_chunk_and_drops_only_what_it_must(tmp_path: Path) -> None:
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD
    sp = Spool(tmp_path / "s.sqlite", max_bytes=row * 10, max_age=1e9)
    sp.append(lines(0, 7))
    sp.append(lines(7, 7))  # 14 points, bound 10: the 4 oldest of the first chunk go
    assert sp.stats.dropped["bytes"] == 4 and sp.stats.bytes == row * 10
    assert body_lines(sp) == lines(4, 10)


@pytest.mark.parametrize("kind", ["spool", "memory"])
def test_append_body_stores_a_joined_batch_as_append_does(kind: str, tmp_path: Path) -> None:
    """The intake appends the encoder's body as it is (no list of lines): the same points, ids and bytes."""
    buf = make(kind, tmp_path)
    buf.append(lines(0, 3))
    buf.append_body("\n".join(lines(3, 4)).encode("utf-8"), 4)
    buf.append_body(b"", 0)  # nothing: no chunk, no id used
    assert body_lines(buf) == lines(0, 7)
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD
    assert buf.stats.points == 7 and buf.stats.bytes == 7 * row and buf.stats.appended == 7
    if kind == "spool":  # one chunk per append (the memory buffer keeps points, chunked when peeked)
        assert [(c.first, c.n) for c in buf.peek_chunks(1000)] == [(1, 3), (4, 4)]
    buf.append(lines(7, 1))
    assert body_lines(buf)[-1] == lines(7, 1)[0] and buf.peek_chunks(1000)[-1].last == 8


def test_append_body_refuses_a_count_that_is_not_its_lines_and_stores_nothing(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite", max_bytes=10**9, max_age=1e9)
    with pytest.raises(ValueError, match="told 3 lines, the body holds 2"):
        sp.append_body("\n".join(lines(0, 2)).encode("utf-8"), 3)
    assert sp.stats.points == 0 and body_lines(sp) == []
    sp.append_body("\n".join(lines(0, 2)).encode("utf-8"), 2)
    assert [c.first for c in sp.peek_chunks(10)] == [1]
