"""The SQLite spool: order, persisted cursor, byte and age bounds (drop oldest, counted), corruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.sink.spool import ROW_OVERHEAD, MemoryBuffer, Spool
from tests.helpers import REPO


def lines(start: int, n: int) -> list[str]:
    return [f"power,device=d v={i:05d}.0 {1_700_000_000_000 + i}" for i in range(start, start + n)]


def values(rows: list) -> list[int]:  # type: ignore[type-arg]
    return [int(r.line.split("v=")[1].split(".")[0]) for r in rows]


def test_oldest_first_and_the_cursor_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(0, 5))
    sp.append(lines(5, 5))
    first = sp.peek(4)
    assert values(first) == [0, 1, 2, 3]
    assert sp.ack(first[-1].id) == 4
    sp.close()

    again = Spool(path, max_bytes=10**9, max_age=1e9)
    assert again.stats.points == 6
    assert values(again.peek(100)) == [4, 5, 6, 7, 8, 9]  # neither resent nor lost
    assert again.stats.commits == 0


def test_byte_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD  # every test line has the same length
    sp = Spool(tmp_path / "s.sqlite", max_bytes=row * 100, max_age=1e9)
    for start in range(0, 250, 10):
        sp.append(lines(start, 10))
    assert sp.stats.dropped["bytes"] == 150
    assert sp.stats.points == 100
    assert sp.stats.bytes <= sp.max_bytes
    kept = values(sp.peek(1000))
    assert kept == list(range(150, 250))  # the newest survive
    sp.close()
    reopened = Spool(tmp_path / "s.sqlite", max_bytes=row * 100, max_age=1e9)
    assert reopened.stats.bytes == row * 100


def test_a_batch_larger_than_the_bound_keeps_its_newest_points(tmp_path: Path) -> None:
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD
    sp = Spool(tmp_path / "s.sqlite", max_bytes=row * 10, max_age=1e9)
    sp.append(lines(0, 25))
    assert values(sp.peek(100)) == list(range(15, 25))
    assert sp.stats.dropped["bytes"] == 15


def test_age_bound_drops_old_points(tmp_path: Path) -> None:
    now = [1000.0]
    sp = Spool(tmp_path / "s.sqlite", max_bytes=10**9, max_age=60, clock=lambda: now[0])
    sp.append(lines(0, 3))
    now[0] = 1030.0
    sp.append(lines(3, 2))
    now[0] = 1070.0
    assert sp.expire() == 3
    assert sp.stats.dropped["age"] == 3
    assert values(sp.peek(10)) == [3, 4]
    assert sp.stats.oldest_enqueued == 1030.0


def test_a_corrupt_file_is_quarantined_and_a_new_spool_starts(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"this is not an SQLite database" * 200)
    sp = Spool(path, max_bytes=10**6, max_age=1e9)
    assert sp.stats.quarantined == 1
    moved = list(tmp_path.glob("spool.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not")
    sp.append(lines(0, 2))
    assert values(sp.peek(10)) == [0, 1]


_WRITER = """
import sys
from pathlib import Path
from gateway.sink.spool import Spool
from tests.helpers import REPO
sp = Spool(Path(sys.argv[1]), max_bytes=10**9, max_age=1e9)
i = 0
while True:
    sp.append([f"power,device=d v={j}.0 {j}" for j in range(i, i + 50)])
    i += 50
    print(i, flush=True)  # acknowledged: committed
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    acked = 0
    while acked < 2000:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    got = values(sp.peek(10**6))
    assert len(got) >= acked
    assert got[:acked] == list(range(acked))


def test_memory_buffer_has_the_same_bounds(tmp_path: Path) -> None:
    row = len(lines(0, 1)[0]) + ROW_OVERHEAD
    now = [0.0]
    mb = MemoryBuffer(max_bytes=row * 5, max_age=10, clock=lambda: now[0])
    mb.append(lines(0, 8))
    assert mb.stats.dropped["bytes"] == 3
    assert values(mb.peek(10)) == [3, 4, 5, 6, 7]
    mb.ack(mb.peek(2)[-1].id)
    assert values(mb.peek(10)) == [5, 6, 7]
    now[0] = 11.0
    assert mb.expire() == 3 and mb.stats.dropped["age"] == 3
