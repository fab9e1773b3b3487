"""The byte bound spares the rows being written: otherwise a row could be counted as dropped and still reach
InfluxDB, and the drop counter would say more than was lost (found by test_spool_drops.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sink.spool import ROW_OVERHEAD, Buffer, MemoryBuffer, Spool


def lines(start: int, n: int) -> list[str]:
    return [f"power,device=d v={i:05d}.0 {1_700_000_000_000 + i}" for i in range(start, start + n)]


def values(rows: list) -> list[int]:  # type: ignore[type-arg]
    return [int(r.line.split("v=")[1].split(".")[0]) for r in rows]


ROW = len(lines(0, 1)[0]) + ROW_OVERHEAD


def make(kind: str, tmp_path: Path) -> Buffer:
    if kind == "spool":
        return Spool(tmp_path / "s.sqlite", max_bytes=ROW * 10, max_age=1e9)
    return MemoryBuffer(max_bytes=ROW * 10, max_age=1e9)


@pytest.mark.parametrize("kind", ["spool", "memory"])
def test_rows_in_flight_are_not_dropped_and_drops_count_only_what_is_lost(kind: str, tmp_path: Path) -> None:
    buf = make(kind, tmp_path)
    buf.append(lines(0, 10))
    sending = buf.peek(4)  # rows 0..3 are being written: they neither go nor count against the bound
    buf.append(lines(10, 8))  # 6 + 8 rows not in flight: the 4 oldest of them go (4, 5, 6, 7)
    assert buf.stats.dropped["bytes"] == 4
    assert values(buf.peek(100)) == [0, 1, 2, 3, *range(8, 18)]
    buf.ack(sending[-1].id)  # the write succeeded: 0..3 are stored, none of them counted as dropped
    assert values(buf.peek(100)) == list(range(8, 18))
    assert buf.stats.points == 10 and buf.stats.dropped["bytes"] == 4


@pytest.mark.parametrize("kind", ["spool", "memory"])
def test_after_a_failed_write_the_rows_are_the_oldest_again(kind: str, tmp_path: Path) -> None:
    buf = make(kind, tmp_path)
    buf.append(lines(0, 10))
    buf.peek(4)
    buf.release()  # the write failed: nothing is in flight
    buf.append(lines(10, 2))
    assert values(buf.peek(100)) == list(range(2, 12))
    assert buf.stats.dropped["bytes"] == 2


@pytest.mark.parametrize("kind", ["spool", "memory"])
def test_the_bound_is_exceeded_by_at_most_the_batch_in_flight(kind: str, tmp_path: Path) -> None:
    buf = make(kind, tmp_path)
    buf.append(lines(0, 10))
    buf.peek(10)  # everything is in flight
    buf.append(lines(10, 5))
    assert buf.stats.dropped["bytes"] == 0
    assert buf.stats.bytes == ROW * 15  # over the bound by the rows in flight, until the write ends
    buf.release()  # it failed: the next append trims to the bound, oldest first
    buf.append(lines(15, 1))
    assert values(buf.peek(100)) == list(range(6, 16))
    assert buf.stats.dropped["bytes"] == 6 and buf.stats.bytes == ROW * 10
